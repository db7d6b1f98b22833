"""A handoff that read the person's held key before an erasure request's transaction committed,
and committed its inbox item after it, on the real broker and mongod (docs/governance.md section 3,
"A late writer").

The two transactions write different documents (the handoff a new item, the erasure the items it
found and the held key's shredding marker), so snapshot isolation lets both commit, and the
request's query never saw the item: it holds the person in plain text after the erasure. The
erasure handler records a recheck in its transaction; the service's recheck loop matches the
request again once every transaction that began before the erasure has ended
(``crm_platform.erasure.Rechecks``). The tests move the rechecks' clock by hand: the race is
reproduced step by step (the handoff's transaction waits before its commit until the erasure's
marker is visible), and nothing depends on how fast the machine is.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.person_keys import LeadPersonKeyShreddedV1
from crm_contracts.topics import LEADS_PERSON_KEYS
from crm_platform.clock import ManualClock
from crm_platform.erasure import RECHECKS, wall_clock
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from crm_platform.shredding import KEYS, sealed_event
from crm_platform.testing import (
    confirmed_once,
    erased_not_confirmed,
    erasure_before_commit,
    erasure_reports,
    eventually,
    produce_envelope,
    request_erasure,
)
from prometheus_client import REGISTRY
from sales import store as repo
from sales.consumers import TOPICS
from sales.main import create_app
from sales.settings import SalesSettings

pytestmark = pytest.mark.integration
Doc = dict[str, Any]
RECHECK_SECONDS = 2.0


@pytest.fixture
def late_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings

    return isolated_settings(
        SalesSettings, "sales", kafka_bootstrap, mongodb_uri, CRM_ERASURE_RECHECK_SECONDS=RECHECK_SECONDS
    )


@asynccontextmanager
async def _sales(settings: ServiceSettings) -> AsyncIterator[ServiceRuntime]:
    """A sales process (its runtime: consumers, relay, the recheck loop) on ``settings``'s database."""
    from crm_platform.testing import running_app, start_group_at_end

    await start_group_at_end(settings.kafka_bootstrap_servers, settings.group_id, TOPICS)
    app = create_app(settings)
    async with running_app(app):
        runtime: ServiceRuntime = app.state.runtime
        yield runtime


async def _found(runtime: ServiceRuntime, collection: str, query: Doc, what: str) -> Doc:
    async def find() -> Doc | None:
        found: Doc | None = await runtime.db[collection].find_one(query)
        return found

    doc: Doc = await eventually(find, what=what)
    return doc


async def _late_item(runtime: ServiceRuntime, lead: str, qualified: Any) -> tuple[Doc, Envelope]:
    """The race, step by step: ``lead``'s sealed handoff handled by sales' own handler (as its
    consumer runs it, the held key opened in the transaction's snapshot); before that transaction
    commits, an erasure request for the person is filed and sales' consumer commits its erasure
    (the held key's shredding marker is visible); then the handoff commits. Returns the stored
    item (asserted to hold the person in plain text: the race happened) and the request."""
    bootstrap = runtime.settings.kafka_bootstrap_servers
    handoff, [key] = sealed_event(qualified(lead), "leads")
    await produce_envelope(
        bootstrap, LEADS_PERSON_KEYS, envelope_for(key, source="leads", correlation_id=lead)
    )
    held = f"held:leads:{key.person_id}"
    await _found(runtime, KEYS, {"_id": held, "key": {"$exists": True}}, "the held key stored")
    envelope = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
    assert runtime.consumer is not None
    handle = runtime.consumer.handlers[LeadQualifiedV1.event_type]  # opens the seal, then sales' handler

    async def committed(request: Envelope) -> None:
        marker = {"_id": held, "shredded": True}
        await _found(runtime, KEYS, marker, "the erasure committed (the key's marker)")

    async def work(tx: Any) -> None:
        await handle(tx, handoff, envelope)

    async with erasure_before_commit(bootstrap, f"{lead}@example.com", committed) as requests:
        await runtime.store.transaction(work)
    item = await runtime.db[repo.INBOX].find_one({"lead_id": lead})
    assert item is not None
    assert item["handoff"]["contact"]["email"] == f"{lead}@example.com", (
        "the race: plaintext after the erasure"
    )
    assert item["person_hashes"] == [held]
    return item, requests[0]


async def _erased(runtime: ServiceRuntime, lead: str) -> Doc:
    async def done() -> Doc | None:
        doc: Doc | None = await runtime.db[repo.INBOX].find_one({"lead_id": lead})
        email = str(doc["handoff"]["contact"]["email"]) if doc is not None else ""
        return doc if email.endswith("@erased.example") else None

    found: Doc = await eventually(done, what=f"the late inbox item of {lead} erased by the recheck")
    return found


async def _holding(runtime: ServiceRuntime, value: str) -> list[str]:
    """The collections of the service's database with a document that holds ``value`` anywhere
    (the audit log's before/after values and the outbox's rows included)."""
    names = sorted(await runtime.db.list_collection_names())
    return [n for n in names if any([value in str(d) async for d in runtime.db[n].find()])]


async def _first_pass_only(runtime: ServiceRuntime, request_id: str, recheck: Doc) -> dict[str, Any]:
    """The erasure committed: ``erasure.erased`` with the recheck's due time, no confirmation."""
    first = await erased_not_confirmed(runtime.db, request_id, "sales")
    due = recheck["recorded_at"] + timedelta(seconds=RECHECK_SECONDS)
    assert datetime.fromisoformat(first["recheck_due_at"]) == due
    assert recheck["records_erased"] == first["records_erased"]
    return first


def _rechecked(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("crm_erasure_rechecks_total", {"service": "sales", "outcome": outcome})
        or 0.0
    )


async def test_an_item_a_handoff_stored_after_the_erasure_from_a_key_read_before_it_is_erased_by_the_recheck(
    late_settings: ServiceSettings, make_qualified: Any
) -> None:
    lead = f"late-{uuid.uuid4().hex[:10]}"
    async with _sales(late_settings) as runtime:
        clock = ManualClock(wall_clock())
        runtime.erasure_rechecks.clock = clock  # the recheck is due only when the test says
        before = _rechecked("erased")
        item, request = await _late_item(runtime, lead, make_qualified)
        request_id = request.payload["request_id"]
        recheck = await _found(runtime, RECHECKS, {"_id": request_id}, "the request's recheck")
        assert recheck["email_hash"] == request.payload["email_hash"]
        assert runtime.erasure_rechecks.delay == RECHECK_SECONDS
        first = await _first_pass_only(runtime, request_id, recheck)

        assert repo.INBOX in await _holding(runtime, f"{lead}@example.com")

        clock.advance(seconds=RECHECK_SECONDS)  # every transaction older than the erasure has ended
        erased = await _erased(runtime, lead)
        assert erased["_id"] == item["_id"]
        assert erased["person_hashes"] == [], "nothing names the person any more"
        assert await _holding(runtime, f"{lead}@example.com") == [], "nowhere: items, audit log, outbox"
        assert await runtime.db[RECHECKS].find_one({"_id": request_id}) is None, "run once, then gone"
        assert _rechecked("erased") == before + 1
        await confirmed_once(runtime.db, request_id, first, late=1)  # the late item


async def test_a_recheck_recorded_by_a_process_stopped_before_it_ran_is_run_by_the_next(
    late_settings: ServiceSettings, make_qualified: Any
) -> None:
    lead = f"late-restart-{uuid.uuid4().hex[:10]}"
    async with _sales(late_settings) as runtime:
        runtime.erasure_rechecks.clock = ManualClock(wall_clock())  # never due in this process
        item, request = await _late_item(runtime, lead, make_qualified)
        request_id = request.payload["request_id"]
        recheck = await _found(runtime, RECHECKS, {"_id": request_id}, "the request's recheck")
        first = await _first_pass_only(runtime, request_id, recheck)
    # Stopped with its recheck not run; a new process on the same database (the real clock).
    async with _sales(late_settings) as runtime:
        erased = await _erased(runtime, lead)
        assert erased["_id"] == item["_id"]
        assert f"{lead}@example.com" not in str(erased)
        assert await runtime.db[RECHECKS].find_one({"_id": request_id}) is None
        await confirmed_once(runtime.db, request_id, first, late=1)  # the late item


async def test_a_recheck_an_older_release_recorded_sends_no_second_confirmation(
    late_settings: ServiceSettings,
) -> None:
    """An older release confirmed at its erasure's commit and recorded its recheck without the
    first pass's counts (no ``confirm``): the recheck still runs, and sends nothing."""
    request_id = f"er-old-{uuid.uuid4().hex[:10]}"
    async with _sales(late_settings) as runtime:
        clock = ManualClock(wall_clock())
        runtime.erasure_rechecks.clock = clock
        older = {"_id": request_id, "email_hash": "0" * 64, "record_ids": [], "recorded_at": clock()}
        await runtime.db[RECHECKS].insert_one(older)
        clock.advance(seconds=RECHECK_SECONDS)

        await _gone(runtime, request_id, "the older release's recheck run")
        assert await erasure_reports(runtime.db, request_id) == {}, "confirmed once, by the older release"


async def test_a_key_stored_after_the_recheck_and_then_shredded_has_what_it_opened_rechecked(
    late_settings: ServiceSettings, make_qualified: Any
) -> None:
    """A key consumer far behind (more than the delay): the request is erased and rechecked in
    sales before the person's key reaches it; then the key comes, a handoff opens with it and
    stores the person in plain text, then the owner's shredding record comes. The shredding
    finds the key live and records a recheck of its hash, which erases the item."""
    lead = f"late-key-{uuid.uuid4().hex[:10]}"
    async with _sales(late_settings) as runtime:
        clock = ManualClock(wall_clock())
        runtime.erasure_rechecks.clock = clock
        bootstrap = runtime.settings.kafka_bootstrap_servers
        request = await request_erasure(bootstrap, f"{lead}@example.com")
        request_id = request.payload["request_id"]
        await _found(runtime, RECHECKS, {"_id": request_id}, "the request's recheck")
        clock.advance(seconds=RECHECK_SECONDS)
        await _gone(runtime, request_id, "the request's recheck run (nothing found)")

        handoff, [key] = sealed_event(make_qualified(lead), "leads")
        keys = (key, LeadPersonKeyShreddedV1(person_id=key.person_id, shredded_at=utcnow()))
        await produce_envelope(
            bootstrap, LEADS_PERSON_KEYS, envelope_for(keys[0], source="leads", correlation_id=lead)
        )
        held = f"held:leads:{key.person_id}"
        await _found(runtime, KEYS, {"_id": held, "key": {"$exists": True}}, "the late key stored")
        handle = runtime.consumer.handlers[LeadQualifiedV1.event_type] if runtime.consumer else None
        assert handle is not None
        envelope = envelope_for(handoff, source="leads", correlation_id=f"journey-{lead}")
        await runtime.store.transaction(lambda tx: handle(tx, handoff, envelope))
        assert repo.INBOX in await _holding(runtime, f"{lead}@example.com"), "opened with the late key"

        await produce_envelope(
            bootstrap, LEADS_PERSON_KEYS, envelope_for(keys[1], source="leads", correlation_id=lead)
        )
        await _found(runtime, KEYS, {"_id": held, "shredded": True}, "the owner's shredding stored")
        recheck = await _found(runtime, RECHECKS, {"_id": {"$regex": f"^key:{held}:"}}, "the key's recheck")
        assert recheck["email_hash"] == request.payload["email_hash"]
        assert repo.INBOX in await _holding(runtime, f"{lead}@example.com"), "the marker alone erases nothing"
        clock.advance(seconds=RECHECK_SECONDS + 3600)  # past the recheck recorded on the wall clock
        erased = await _erased(runtime, lead)
        assert f"{lead}@example.com" not in str(erased)
        await _gone(runtime, recheck["_id"], "the key's recheck run")
        assert await erasure_reports(runtime.db, recheck["_id"]) == {}, "no request of the gateway's"


async def _gone(runtime: ServiceRuntime, recheck_id: str, what: str) -> None:
    async def gone() -> bool | None:
        return True if await runtime.db[RECHECKS].find_one({"_id": recheck_id}) is None else None

    await eventually(gone, what=what)
