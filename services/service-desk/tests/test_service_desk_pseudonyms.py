"""Field-level rules (issue 9): an account's contacts and what a ticket says about a person, as
analysts and executives see them (crm_platform.field_rules): contacts pseudonymised, the ticket's
free text (request, notes, result) withheld, on the lists, one record and the CSV exports.

Analysts and executives hold no service-desk route by default: the module grants them the
accounts and tickets (as an administrator would, through the policy), which shows that a route
opened later is covered too. Service reps, admins and an analyst who is also a rep see it all.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics
from crm_contracts.events.common import Contact
from crm_contracts.events.sales import DealWonV1
from crm_platform.field_rules import applies_to
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    eventually,
    grant_for_test,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from service_desk.main import create_app

pytestmark = pytest.mark.integration

GRANT = "service-desk.cases.work"


def _as(*roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(list(roles), 'reader', user_id='reader')}"}


@pytest.fixture(scope="module")
async def client(
    desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app = create_app(settings)
    async with running_app(app) as c:
        await grant_for_test(app.state.runtime, {"analyst": {GRANT}, "executive": {GRANT}})
        yield c


async def _account_and_ticket(
    client: httpx.AsyncClient, bootstrap: str, make_deal: Callable[..., DealWonV1], tag: str
) -> tuple[str, str]:
    contact = Contact(
        name="Ada Lovelace", email=f"ada.{tag}@acme.example", phone="+49 30 1234567", role="CTO"
    )
    deal = make_deal(account_name=f"Acme {tag}", contacts=[contact])
    await produce_envelope(bootstrap, topics.DEAL_WON, envelope_for(deal, source="sales", correlation_id=tag))

    async def landed() -> str | None:
        r = await client.get("/accounts", params={"deal_id": deal.deal_id}, headers=_as("admin"))
        items = r.json()["items"]
        return str(items[0]["account_id"]) if items else None

    account_id: str = await eventually(landed, what="the account")
    body = {"account_id": account_id, "subject": f"Login {tag}", "request": "Ada cannot log in from home",
            "priority": "normal"}  # fmt: skip
    r = await client.post("/tickets", json=body, headers=_as("service_rep"))
    assert r.status_code == 201, r.text
    return account_id, str(r.json()["ticket_id"])


async def _read(
    client: httpx.AsyncClient, roles: tuple[str, ...], account_id: str, ticket_id: str, tag: str
) -> str:
    """Every read route's answer about the account and its ticket, as one text (pseudonymised
    users may not search by words: they find them by the account's name in the page)."""
    accounts: dict[str, Any] = {"limit": 500} if applies_to(roles) else {"q": tag}
    tickets: dict[str, Any] = {"account_id": account_id} if applies_to(roles) else {"q": tag}
    seen = []
    for path, params in (
        ("/accounts", accounts),
        (f"/accounts/{account_id}", {}),
        ("/accounts/export", accounts),
        ("/tickets", tickets),
        (f"/tickets/{ticket_id}", {}),
        ("/tickets/export", tickets),
    ):
        r = await client.get(path, params=params, headers=_as(*roles))
        assert r.status_code == 200, (roles, path, r.text)
        seen.append(r.text)
    assert tag in seen[0]  # the account was listed
    assert ticket_id in seen[3]  # the ticket was listed
    return "\n".join(seen)


async def test_analysts_and_executives_see_contacts_pseudonymised_and_requests_withheld(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    tag = uuid.uuid4().hex[:8]
    account_id, ticket_id = await _account_and_ticket(client, kafka_bootstrap, make_deal, tag)
    for roles in (("analyst",), ("executive",)):
        seen = await _read(client, roles, account_id, ticket_id, tag)
        for personal in (f"ada.{tag}", "Ada Lovelace", "1234567", "cannot log in"):
            assert personal not in seen, (roles, personal)
        assert pseudonym("email", f"ada.{tag}@acme.example", DEV_PSEUDONYM_KEY) in seen
        assert f"Acme {tag}" in seen  # the account's name is not a person's
        r = await client.get(f"/accounts/{account_id}", headers=_as(*roles))
        assert r.json()["contacts"][0]["name"] == pseudonym("name", "Ada Lovelace", DEV_PSEUDONYM_KEY)
        r = await client.get(f"/tickets/{ticket_id}", headers=_as(*roles))
        assert r.status_code == 200, (roles, r.text)
        ticket = r.json()
        assert (ticket["request"], ticket["subject"]) == ("[withheld]", f"Login {tag}")
        rows = list(csv.DictReader(io.StringIO((await client.get("/accounts/export", params={"limit": 500},
                                                                   headers=_as(*roles))).text)))  # fmt: skip
        assert rows
        assert all(f"ada.{tag}" not in str(row) for row in rows)
        # Searching by a real e-mail (or any words) would tell them that person is a customer.
        for path in ("/accounts", "/accounts/export", "/tickets", "/tickets/export"):
            r = await client.get(path, params={"q": f"ada.{tag}@acme.example"}, headers=_as(*roles))
            assert r.status_code == 403, (roles, path, r.text)
            assert r.json()["details"]["field"] == "query.q"
            assert f"ada.{tag}" not in r.text


async def test_reps_admins_and_an_analyst_who_is_a_rep_see_the_people(
    client: httpx.AsyncClient, kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    tag = uuid.uuid4().hex[:8]
    account_id, ticket_id = await _account_and_ticket(client, kafka_bootstrap, make_deal, tag)
    for roles in (("service_rep",), ("admin",), ("analyst", "service_rep")):
        seen = await _read(client, roles, account_id, ticket_id, tag)
        for personal in (f"ada.{tag}@acme.example", "Ada Lovelace", "Ada cannot log in from home"):
            assert personal in seen, (roles, personal)
