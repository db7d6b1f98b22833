"""Customer 360: one customer's journey, assembled from each department's API.

Keyed by the lead id, which is the journey's correlation id: the lead (marketing),
its inbox item and verdict and the deal (sales), the account and its tickets
(service desk). Each part is asked for with the user's own token; a part the
user's role may not see is shown as such, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Response

from console.api_client import ApiError, UserApi
from console.web import PageCtx

router = APIRouter()


@dataclass
class Part:
    title: str
    data: Any = None
    refused: str | None = None  # the API's words when it would not show this part
    missing: bool = False


@dataclass
class Journey:
    lead_id: str
    parts: dict[str, Part] = field(default_factory=dict)


async def fetch(api: UserApi, title: str, path: str, params: dict[str, Any] | None = None) -> Part:
    try:
        return Part(title, await api.get(path, params))
    except ApiError as exc:
        if exc.status == 404:
            return Part(title, missing=True)
        return Part(title, refused=exc.message)


async def assemble(api: UserApi, lead_id: str) -> Journey:
    journey = Journey(lead_id)
    journey.parts["lead"] = await fetch(api, "Lead (marketing)", f"/api/leads/leads/{lead_id}")
    journey.parts["behaviours"] = await fetch(api, "Behaviour", f"/api/leads/leads/{lead_id}/behaviours")
    journey.parts["inbox"] = inbox = await fetch(api, "Handoff to sales", f"/api/sales/inbox/{lead_id}")
    verdict = (inbox.data or {}).get("verdict") or {}
    opp_id = verdict.get("opportunity_id")
    deal = Part("Deal (sales)", missing=True)
    if opp_id:
        deal = await fetch(api, "Deal (sales)", f"/api/sales/opportunities/{opp_id}")
    elif inbox.refused:
        deal = Part("Deal (sales)", refused=inbox.refused)
    journey.parts["deal"] = deal
    account = Part("Account (customer success)", missing=True)
    if opp_id:
        found = await fetch(api, account.title, "/api/service-desk/accounts", {"deal_id": opp_id})
        if found.refused:
            account = found
        elif found.data and found.data.get("items"):
            account = Part(account.title, found.data["items"][0])
    journey.parts["account"] = account
    tickets = Part("Tickets", missing=True)
    if account.data:
        tickets = await fetch(
            api,
            "Tickets",
            "/api/service-desk/tickets",
            {"account_id": account.data["account_id"], "limit": 100},
        )
    elif account.refused:
        tickets = Part("Tickets", refused=account.refused)
    journey.parts["tickets"] = tickets
    return journey


@router.get("/customers/{lead_id}", include_in_schema=False)
async def customer(ctx: PageCtx, lead_id: str) -> Response:
    ctx.require("customer")
    journey = await assemble(ctx.api, lead_id)
    return ctx.render("customer.html", journey=journey, parts=journey.parts)
