"""Customer 360: one customer's journey, assembled from each department's API.

Keyed by the lead id, which is the journey's correlation id: the lead (marketing),
its inbox item and verdict and the deal (sales), the account, its tickets, surveys and
the action items customer success raised (service desk). Each part is asked for with the
user's own token; a part the user's role may not see is shown as such, never guessed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Response

from console.api_client import UserApi
from console.web import PageCtx, Refusal, submit

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
    """One part: its data, missing (404), or refused in the API's words."""
    answer = await submit(api.get(path, params))
    if not isinstance(answer, Refusal):
        return Part(title, answer)
    return Part(title, missing=True) if answer.status == 404 else Part(title, refused=answer.message)


async def assemble(api: UserApi, lead_id: str) -> Journey:
    """The journey in three rounds of concurrent reads: what is known by the lead id (lead,
    behaviour, handoff), then by the deal id the verdict names (deal, account), then the
    account's tickets, surveys and action items."""
    journey = Journey(lead_id)
    lead, behaviours, inbox = await asyncio.gather(
        fetch(api, "Lead (marketing)", f"/api/leads/leads/{lead_id}"),
        fetch(api, "Behaviour", f"/api/leads/leads/{lead_id}/behaviours"),
        fetch(api, "Handoff to sales", f"/api/sales/inbox/{lead_id}"),
    )
    journey.parts.update(lead=lead, behaviours=behaviours, inbox=inbox)
    opp_id = ((inbox.data or {}).get("verdict") or {}).get("opportunity_id")
    deal = Part("Deal (sales)", missing=True)
    account = Part("Account (customer success)", missing=True)
    if opp_id:
        deal, found = await asyncio.gather(
            fetch(api, deal.title, f"/api/sales/opportunities/{opp_id}"),
            fetch(api, account.title, "/api/service-desk/accounts", {"deal_id": opp_id}),
        )
        if found.refused:
            account = found
        elif found.data and found.data.get("items"):
            account = Part(account.title, found.data["items"][0])
    elif inbox.refused:
        deal = Part(deal.title, refused=inbox.refused)
    journey.parts.update(deal=deal, account=account)
    journey.parts.update(await _account_parts(api, account))
    return journey


async def _account_parts(api: UserApi, account: Part) -> dict[str, Part]:
    """The account's tickets, surveys and action items, read together (each by its own API)."""
    titles = {"tickets": "Tickets", "surveys": "Surveys (CSAT and NPS)", "action_items": "Action items"}
    if not account.data:
        return {
            key: Part(title, refused=account.refused, missing=not account.refused)
            for key, title in titles.items()
        }
    account_id = account.data["account_id"]
    base = f"/api/service-desk/accounts/{account_id}"
    tickets, surveys, items = await asyncio.gather(
        fetch(api, titles["tickets"], "/api/service-desk/tickets", {"account_id": account_id, "limit": 100}),
        fetch(api, titles["surveys"], f"{base}/surveys"),
        fetch(api, titles["action_items"], f"{base}/action-items"),
    )
    return {"tickets": tickets, "surveys": surveys, "action_items": items}


@router.get("/customers/{lead_id}", include_in_schema=False)
async def customer(ctx: PageCtx, lead_id: str) -> Response:
    ctx.require("customer")
    journey = await assemble(ctx.api, lead_id)
    return ctx.render("customer.html", journey=journey, parts=journey.parts)
