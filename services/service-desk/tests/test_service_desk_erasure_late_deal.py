"""A won deal that opened its contacts with the held keys before an erasure request's transaction
committed, and committed its account after it, on the real broker and mongod (docs/governance.md
section 3, "A late writer"): the service desk's side of the race sales' inbox has
(``services/sales/tests/test_sales_erasure_late_handoff.py``).

The deal's transaction writes a new account, the erasure the accounts it found and the held
keys' shredding markers: no write conflict, and the account holds the person in plain text after
the erasure. The erasure's recheck (``crm_platform.erasure.Rechecks``, its clock moved by hand
here) matches the request again and erases it; the deal's other contact is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for, topics
from crm_contracts.events.common import Contact
from crm_contracts.events.sales import DealWonV1, DealWonV2
from crm_platform.clock import ManualClock
from crm_platform.erasure import RECHECKS, wall_clock
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.shredding import KEYS, sealed_event
from crm_platform.testing import (
    confirmed_once,
    erased_not_confirmed,
    erasure_before_commit,
    eventually,
    produce_envelope,
    running_app,
    start_group_at_end,
)
from service_desk import store as repo
from service_desk.main import create_app

pytestmark = pytest.mark.integration
Doc = dict[str, Any]
ERASED = Contact(name="Ada Lovelace", email="ada.late@acme.example", phone="+44 20 7946 0001", role="CTO")
KEPT = Contact(name="Bob Stone", email="bob.late@acme.example", role="CFO")


async def _found(runtime: ServiceRuntime, collection: str, query: Doc, what: str) -> Doc:
    async def find() -> Doc | None:
        found: Doc | None = await runtime.db[collection].find_one(query)
        return found

    doc: Doc = await eventually(find, what=what)
    return doc


async def _late_account(runtime: ServiceRuntime, make_deal: Callable[..., DealWonV1]) -> tuple[Doc, Envelope]:
    """The race: the deal handled by the desk's own handler (its contacts opened in the
    transaction's snapshot); before it commits, ERASED's request is filed and the desk's consumer
    commits its erasure (the held key's marker is visible); then the deal commits."""
    bootstrap = runtime.settings.kafka_bootstrap_servers
    plain = DealWonV2.model_validate(
        {**make_deal().to_payload(), "contacts": [ERASED.model_dump(), KEPT.model_dump()]}
    )
    deal, keys = sealed_event(plain, "sales")
    for key in keys:
        await produce_envelope(
            bootstrap, topics.SALES_PERSON_KEYS, envelope_for(key, source="sales", correlation_id="k")
        )
        await _found(
            runtime, KEYS, {"_id": f"held:sales:{key.person_id}", "key": {"$exists": True}}, "a held key"
        )
    erased_key = f"held:sales:{keys[0].person_id}"
    envelope = envelope_for(deal, source="sales", correlation_id=plain.deal_id)
    assert runtime.consumer is not None
    handle = runtime.consumer.handlers[DealWonV1.event_type]  # opens the seals, then the desk's handler

    async def committed(request: Envelope) -> None:
        marker = {"_id": erased_key, "shredded": True}
        await _found(runtime, KEYS, marker, "the erasure committed (the marker)")

    async def work(tx: Any) -> None:
        await handle(tx, deal, envelope)

    async with erasure_before_commit(bootstrap, str(ERASED.email), committed) as requests:
        await runtime.store.transaction(work)
    account = await runtime.db[repo.ACCOUNTS].find_one({"deal_id": plain.deal_id})
    assert account is not None
    assert [c["email"] for c in account["contacts"]] == [ERASED.email, KEPT.email], (
        "the race: plaintext after it"
    )
    return account, requests[0]


async def test_an_account_a_deal_stored_after_the_erasure_from_keys_read_before_it_is_erased_by_the_recheck(
    desk_settings: Callable[..., ServiceSettings], make_deal: Callable[..., DealWonV1]
) -> None:
    settings = desk_settings(CRM_ERASURE_RECHECK_SECONDS=2)
    # From the end of the erasure requests too: an earlier run's request for the same person,
    # consumed during the race, would erase the account before this one (the race not reproduced).
    at_end = [topics.DEAL_WON, topics.GATEWAY_ERASURE_REQUESTS]
    await start_group_at_end(settings.kafka_bootstrap_servers, settings.group_id, at_end)
    app = create_app(settings)
    async with running_app(app):
        runtime: ServiceRuntime = app.state.runtime
        clock = ManualClock(wall_clock())
        runtime.erasure_rechecks.clock = clock  # due only when the test says
        account, request = await _late_account(runtime, make_deal)
        request_id = request.payload["request_id"]
        await _found(runtime, RECHECKS, {"_id": request_id}, "the request's recheck")
        first = await erased_not_confirmed(runtime.db, request_id, "service-desk")

        clock.advance(seconds=2)  # every transaction older than the erasure has ended
        query = {"_id": account["_id"], "contacts.0.email": {"$regex": "@erased[.]example$"}}
        erased = await _found(runtime, repo.ACCOUNTS, query, "the late account's contact erased")
        assert erased["contacts"][1]["email"] == KEPT.email, "the deal's other contact is kept"
        for value in (str(ERASED.email), str(ERASED.phone)):
            names = sorted(await runtime.db.list_collection_names())
            held = [n for n in names if any([value in str(d) async for d in runtime.db[n].find()])]
            assert held == [], (value, held)  # nowhere: accounts, their audit entries, the outbox
        await confirmed_once(runtime.db, request_id, first, late=1)  # the late account
