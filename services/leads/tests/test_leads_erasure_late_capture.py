"""A capture whose transaction began before an erasure request's transaction committed, and
inserted the person's lead after it, on the real broker and mongod (docs/governance.md section 3,
"A late writer": marketing's case of the race sales' inbox and the service desk's accounts have).

Marketing holds no held keys: a capture that read a stored lead before the erasure writes that
lead too, so mongod serialises the two (a write conflict). A capture of an e-mail not stored yet
inserts a new lead; the erasure, finding none, writes nothing the capture touches, so both
commit, and the lead holds the person in plain text after the request was confirmed. The
request's recheck (its clock moved by hand here) erases it.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_platform.clock import ManualClock
from crm_platform.erasure import RECHECKS, wall_clock
from crm_platform.settings import ServiceSettings
from crm_platform.testing import confirmed_once, erased_not_confirmed, erasure_before_commit, eventually
from leads import store as repo
from leads.domain.leads import Capture
from leads.handlers import capture_lead

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def leads_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings
    from leads.settings import LeadsSettings

    return isolated_settings(
        LeadsSettings, "leads", kafka_bootstrap, mongodb_uri, CRM_ERASURE_RECHECK_SECONDS=2
    )


async def _holding(leads: Leads, value: str) -> list[str]:
    """The collections of marketing's database with a document holding ``value`` anywhere."""
    db = leads.runtime.db
    names = sorted(await db.list_collection_names())
    return [n for n in names if any([value in str(d) async for d in db[n].find()])]


async def test_a_lead_a_capture_begun_before_the_erasure_inserted_after_it_is_erased_by_the_recheck(
    leads: Leads,
) -> None:
    runtime = leads.runtime
    clock = ManualClock(wall_clock())
    runtime.erasure_rechecks.clock = clock  # the recheck is due only when the test says
    email = f"late-capture-{uuid.uuid4().hex[:10]}@example.com"

    async def committed(request: Envelope) -> None:
        request_id = request.payload["request_id"]

        async def confirmed() -> Doc | None:  # its first pass's report, in the erasure's transaction
            field = "envelope.payload.request_id"
            query = {"$or": [{field: request_id}, {f"events.{field}": request_id}]}
            found: Doc | None = await runtime.db["outbox"].find_one(query)
            return found

        await eventually(confirmed, what="marketing's erasure of the request committed")

    capture = Capture(email=email, name="Late Capture", source_channel="webinar", marketing_email=True)
    bootstrap = runtime.settings.kafka_bootstrap_servers
    async with erasure_before_commit(bootstrap, email, committed) as filed:
        outcome = await capture_lead(leads.app.state.uow, capture)
    requests = [request.payload["request_id"] for request in filed]
    lead = await runtime.db[repo.LEADS].find_one({"_id": outcome.lead.id})
    assert lead is not None
    assert lead["email"] == email, "the race: the lead is stored in plain text after the erasure"
    assert await runtime.db[RECHECKS].find_one({"_id": requests[0]}) is not None
    first = await erased_not_confirmed(runtime.db, requests[0], "leads")

    clock.advance(seconds=2)  # every transaction older than the erasure has ended

    async def erased() -> Doc | None:
        found: Doc | None = await runtime.db[repo.LEADS].find_one({"_id": outcome.lead.id})
        return found if found is not None and str(found["email"]).endswith("@erased.example") else None

    await eventually(erased, what="the late lead erased by the recheck")
    for value in (email, "Late Capture"):
        assert await _holding(leads, value) == [], value  # the lead, its audit entries, the outbox
    assert await runtime.db[RECHECKS].find_one({"_id": requests[0]}) is None
    await confirmed_once(runtime.db, requests[0], first, late=1)  # the late lead
