"""POST /leads/bulk against the real mongod and broker: the same merges and events as one by one."""

from __future__ import annotations

import asyncio
import gc
import uuid
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import fastapi.routing
import pytest
from crm_contracts import Envelope, utcnow
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_EVENTS
from crm_platform.app import GC_YOUNG_THRESHOLD
from crm_platform.mongo import BATCH_EVENTS, HANDOFFS_SENT, OUTBOX
from crm_platform.testing import TopicReader, auth_headers, eventually
from leads import handlers
from leads.api.models import BulkCaptureMinimalOut, BulkCaptureOut

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")
MINIMAL = "return=minimal"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def email() -> str:
    return f"bulk-{uuid.uuid4().hex[:12]}@example.com"


def lead(address: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": "Ada",
        "email": address,
        "source_channel": "web_form",
        "consent": {"marketing_email": True},
        **fields,
    }


async def test_bulk_capture_creates_and_merges_in_order_with_one_event_each(
    leads: Leads, kafka_bootstrap: str
) -> None:
    known, new, twice = email(), email(), email()
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        existing = await leads.capture(known)
        body = {
            "leads": [
                lead(new),
                lead(f" {known.upper()} ", company="Engines Ltd", source_channel="trade_show"),
                lead(twice, source_channel="webinar"),
                lead(twice, name="Ada L.", company="Later Co", source_channel="import"),
            ]
        }
        r = await leads.client.post("/leads/bulk", json=body, headers=MARKETING)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["merged"] for x in results] == [False, True, False, True]
        assert [x["lead"]["email"] for x in results] == [new, known, twice, twice]
        assert results[1]["lead"]["id"] == existing["lead"]["id"]
        assert results[1]["lead"]["company"] == "Engines", "filled fields are kept, as one by one"
        assert [t["channel"] for t in results[1]["lead"]["touches"]] == ["webinar", "trade_show"]
        assert results[2]["lead"]["id"] == results[3]["lead"]["id"], "one lead per email within a batch"
        merged_twice = results[3]["lead"]
        assert [t["channel"] for t in merged_twice["touches"]] == ["webinar", "import"]
        assert merged_twice["company"] == "Later Co"

        for x in results:  # what is stored is what was answered
            stored = (await leads.client.get(f"/leads/{x['lead']['id']}", headers=MARKETING)).json()
            assert stored["email"] == x["lead"]["email"]
        stored = (await leads.client.get(f"/leads/{merged_twice['id']}", headers=MARKETING)).json()
        assert stored["touch_count"] == 2

        ids = {x["lead"]["id"] for x in results}

        def captured(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.captured") if e.partition_key in ids]
            return envs if len(envs) >= 5 else None

        envs = await reader.wait_for(captured, what="five lead.captured events")
        assert len(envs) == 5, "one event per capture (the first capture of the known email included)"
        known_events = [e.payload["merged"] for e in envs if e.partition_key == existing["lead"]["id"]]
        assert known_events == [False, True]
        per_lead = [e.payload["merged"] for e in envs if e.partition_key == merged_twice["id"]]
        assert per_lead == [False, True], "in the batch's order"
        rows = await leads.runtime.db[OUTBOX].find({f"{BATCH_EVENTS}.key": {"$in": list(ids)}}).to_list()
        assert [r["count"] for r in rows] == [4], "the batch's four events stored in one outbox row"
    finally:
        await reader.stop()


async def test_bulk_capture_preferring_return_minimal_answers_ids_and_verdicts_with_the_same_effects(
    leads: Leads,
) -> None:
    known, new, twice = email(), email(), email()
    existing = (await leads.capture(known))["lead"]
    body = {"leads": [lead(new), lead(known.upper()), lead(twice), lead(twice, company="Later Co")]}
    prefer = {**MARKETING, "Prefer": 'respond-async, RETURN="minimal"; x=1'}
    r = await leads.client.post("/leads/bulk", json=body, headers=prefer)
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "return=minimal"
    results = r.json()["results"]
    assert [sorted(x) for x in results] == [["id", "merged"]] * 4, "no lead representation"
    assert [x["merged"] for x in results] == [False, True, False, True]
    assert results[1]["id"] == existing["id"]
    assert results[2]["id"] == results[3]["id"]
    for x, address in zip(results, [new, known, twice, twice], strict=True):
        stored = (await leads.client.get(f"/leads/{x['id']}", headers=MARKETING)).json()
        assert stored["email"] == address
    assert stored["company"] == "Later Co"
    plain = await leads.client.post(
        "/leads/bulk", json=body, headers={**MARKETING, "Prefer": "return=representation"}
    )
    assert "preference-applied" not in plain.headers
    assert [x["lead"]["id"] for x in plain.json()["results"]] == [x["id"] for x in results]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"leads": []}, "body.leads"),
        ({"leads": [lead("a@example.com"), lead("not-an-email")]}, "body.leads.1.email"),
        ({"leads": [lead("a@example.com", consent={})]}, "body.leads.0.consent.marketing_email"),
        ({"leads": [lead(f"x{i}@example.com") for i in range(1001)]}, "body.leads"),
        ({"lead": [lead("a@example.com")]}, "body.leads"),
    ],
)
async def test_bad_bulk_capture_is_a_422_naming_the_field_and_stores_nothing(
    leads: Leads, body: dict[str, Any], field: str
) -> None:
    r = await leads.client.post("/leads/bulk", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert field in {f["field"] for f in r.json()["fields"]}, r.json()
    assert (await leads.client.get("/leads?limit=1", headers=MARKETING)).status_code == 200
    page = (await leads.client.get("/leads?limit=200", headers=MARKETING)).json()
    assert "a@example.com" not in {x["email"] for x in page["items"]}


async def test_bulk_capture_roles(leads: Leads) -> None:
    body = {"leads": [lead(email())]}
    assert (await leads.client.post("/leads/bulk", json=body)).status_code == 401
    for role in ("sales_rep", "sales_manager", "analyst", "service_rep"):
        r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers([role], "x"))
        assert r.status_code == 403, role
    r = await leads.client.post("/leads/bulk", json=body, headers=auth_headers(["admin"], "root"))
    assert r.status_code == 200


async def test_a_bulk_answer_is_not_validated_again_by_the_framework(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk answer is written as JSON once: FastAPI's ``serialize_response`` (validating a
    returned model against the route's ``response_model`` union, every result rebuilt, before
    dumping it) is not called, and both shapes answer what their models say (docs/performance.md,
    "Twelfth session, capture")."""
    serialized: list[object] = []
    original = fastapi.routing.serialize_response

    async def counting(*args: Any, **kwargs: Any) -> Any:
        serialized.append(kwargs.get("response_content"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "serialize_response", counting)
    new, twice = email(), email()
    body = {"leads": [lead(new), lead(twice), lead(twice, company="Later Co")]}
    r = await leads.client.post("/leads/bulk", json=body, headers={**MARKETING, "Prefer": MINIMAL})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["Preference-Applied"] == MINIMAL
    minimal = BulkCaptureMinimalOut.model_validate_json(r.content)
    assert [x.merged for x in minimal.results] == [False, False, True]
    assert minimal.results[1].id == minimal.results[2].id
    assert r.json() == minimal.model_dump(mode="json")
    r = await leads.client.post("/leads/bulk", json={"leads": [lead(twice)]}, headers=MARKETING)
    assert r.status_code == 200, r.text
    assert "Preference-Applied" not in r.headers
    whole = BulkCaptureOut.model_validate_json(r.content)
    assert whole.results[0].merged
    assert whole.results[0].lead.id == minimal.results[1].id
    assert whole.results[0].lead.company == "Later Co"
    assert whole.results[0].lead.touch_count == 3
    assert r.json() == whole.model_dump(mode="json")
    assert serialized == [], "the bulk answers went through the framework's response validation"


async def test_bulk_captures_take_turns_for_their_transactions(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``bulk_in_flight`` (2) batches build and commit at once; the others wait with only
    their parsed requests (a 500-lead batch holds about 5 MB until it commits: leads' peak RSS
    with four at once, docs/performance.md, tenth session, rss). Every request is still answered."""
    running, most = 0, 0
    capture_leads = handlers.capture_leads

    async def spying(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            for _ in range(50):  # the other requests run meanwhile, up to their turn
                await asyncio.sleep(0)
            return await capture_leads(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(handlers, "capture_leads", spying)
    bodies = [{"leads": [lead(email()), lead(email())]} for _ in range(5)]
    posts = (leads.client.post("/leads/bulk", json=b, headers=MARKETING) for b in bodies)
    answers = await asyncio.gather(*posts)
    assert [r.status_code for r in answers] == [200] * 5
    assert leads.settings.bulk_in_flight == 2
    assert most == 2


async def test_a_bulk_batch_is_built_without_young_collections_walking_it(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500-lead batch keeps ~60,000 objects alive until its transaction ends, all freed by
    their reference counts: at the service's young threshold (10,000) the collector walked them
    several times per batch and freed almost nothing (docs/performance.md, eleventh session,
    bulk). Now no collection runs while the batch is built, and the threshold is back after."""
    building, during = False, 0
    capture_leads = handlers.capture_leads

    async def spying(*args: Any, **kwargs: Any) -> Any:
        nonlocal building
        building = True
        try:
            return await capture_leads(*args, **kwargs)
        finally:
            building = False

    def counted(phase: str, info: dict[str, int]) -> None:
        nonlocal during
        during += phase == "start" and building

    monkeypatch.setattr(handlers, "capture_leads", spying)
    body = {"leads": [lead(email(), company="Batch Co") for _ in range(500)]}
    saved = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    gc.collect()  # every generation's count starts from zero
    gc.callbacks.append(counted)
    try:
        r = await leads.client.post("/leads/bulk", json=body, headers={**MARKETING, "Prefer": MINIMAL})
        after = gc.get_threshold()
    finally:
        gc.callbacks.remove(counted)
        gc.set_threshold(*saved)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 500
    assert during == 0, f"{during} collections while a 500-lead batch was built"
    assert after == (GC_YOUNG_THRESHOLD, 10, 10)


# -- POST /leads/behaviours/bulk ---------------------------------------------------------------


async def test_bulk_behaviours_record_in_order_and_hand_each_qualified_lead_over_once(
    leads: Leads, kafka_bootstrap: str
) -> None:
    ada = (await leads.capture())["lead"]["id"]
    bob = (await leads.capture())["lead"]["id"]
    reader = await TopicReader(kafka_bootstrap, LEAD_QUALIFIED).start()
    try:
        # Distinct times: the behaviour list is ordered by when each occurred.
        first, later = (utcnow() - timedelta(minutes=m) for m in (2, 1))
        body = {
            "behaviours": [
                {"lead_id": ada, "behaviour": "form_submit", "external_id": "t-1", "occurred_at": iso(first)},
                {"lead_id": bob, "behaviour": "page_view"},
                {"lead_id": ada, "behaviour": "trial_signup", "occurred_at": iso(later)},
                {"lead_id": ada, "behaviour": "form_submit", "external_id": "t-1"},  # sent twice
            ]
        }
        r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["lead_id"] for x in results] == [ada, bob, ada, ada]
        assert [x["duplicate"] for x in results] == [False, False, False, True]
        assert [x["qualified_now"] for x in results] == [False, False, True, False]
        assert results[3]["behaviour_id"] == results[0]["behaviour_id"]
        assert results[2]["status"] == "qualified"

        # The same behaviours one by one give the same score.
        cid = (await leads.capture())["lead"]["id"]
        one_by_one = await leads.behave(cid, "form_submit", "trial_signup")
        assert results[2]["score"] == one_by_one["lead"]["score"]

        stored = await leads.client.get(f"/leads/{ada}/behaviours", headers=MARKETING)
        assert [b["behaviour"] for b in stored.json()["items"]] == ["trial_signup", "form_submit"]
        lead = await leads.lead(ada)
        assert lead["status"] == "qualified"
        assert lead["score"] == results[2]["score"]

        again = await leads.client.post(
            "/leads/behaviours/bulk",
            json={"behaviours": [{"lead_id": ada, "behaviour": "form_submit", "external_id": "t-1"}]},
            headers={**MARKETING, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert again.status_code == 200, again.text
        assert again.json()["results"][0]["duplicate"] is True, "a stored external_id is not counted again"

        def handed(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.qualified") if e.partition_key in {ada, bob, cid}]
            return envs if len(envs) >= 2 else None

        envs = await reader.wait_for(handed, what="two lead.qualified events")
        assert sorted(e.partition_key for e in envs) == sorted([ada, cid]), "one handoff per qualified lead"
    finally:
        await reader.stop()


async def test_a_trackers_batch_stores_its_behaviour_events_and_then_its_handoffs_in_one_row(
    leads: Leads,
) -> None:
    """The batch's behaviour events share ONE outbox row, in the batch's order, and its
    handoffs follow them in that row, in order (one row per behaviour and one per handoff
    before: the handoff's outbox cost); each handoff's record names the row (its re-send)."""
    ada, bob, cid = [(await leads.capture())["lead"]["id"] for _ in range(3)]
    order = [(ada, "form_submit"), (bob, "page_view"), (cid, "form_submit"), (ada, "trial_signup")]
    order += [(cid, "trial_signup")]
    body = {"behaviours": [{"lead_id": i, "behaviour": b} for i, b in order]}
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
    assert r.status_code == 200, r.text
    ids = [ada, bob, cid]
    mine = {"$or": [{"key": {"$in": ids}}, {f"{BATCH_EVENTS}.key": {"$in": ids}}]}
    query = {**mine, "event_type": {"$ne": "lead.captured"}}
    rows = await leads.runtime.db[OUTBOX].find(query).sort("_id", 1).to_list()
    assert [r["event_type"] for r in rows] == ["lead.behaviour_recorded"], "one row"
    items = [i for i in rows[0][BATCH_EVENTS] if i["key"] in ids]  # the keys' records are keyed by person
    recorded = [(i["key"], i["envelope"]["payload"]["behaviour"]) for i in items[:-2]]
    assert recorded == order, "every behaviour in one row, in the batch's order"
    handoffs = items[-2:]
    assert [(i["event_type"], i["key"]) for i in handoffs] == [
        ("lead.qualified", ada),
        ("lead.qualified", cid),
    ]

    async def tracked() -> list[dict[str, Any]]:  # recorded by the relay as it publishes them
        query = {"_id": {"$in": [i["event_id"] for i in handoffs]}}
        found = await leads.runtime.db[HANDOFFS_SENT].find(query).to_list()
        return found if len(found) == 2 else []

    sent = await eventually(tracked, what="both handoffs' records")
    assert [d["row"] for d in sent] == [rows[0]["event_id"]] * 2, "each handoff's record names its row"


async def test_bulk_behaviours_naming_an_unknown_lead_are_a_404_and_record_nothing(leads: Leads) -> None:
    ada = (await leads.capture())["lead"]["id"]
    body = {
        "behaviours": [
            {"lead_id": ada, "behaviour": "trial_signup"},
            {"lead_id": "no-such-lead", "behaviour": "page_view"},
        ]
    }
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
    assert r.status_code == 404, r.text
    assert "no-such-lead" in r.json()["message"]
    stored = await leads.client.get(f"/leads/{ada}/behaviours", headers=MARKETING)
    assert stored.json()["items"] == []
    assert (await leads.lead(ada))["score"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"behaviours": []}, "body.behaviours"),
        ({"behaviours": [{"lead_id": "x", "behaviour": "dancing"}]}, "body.behaviours.0.behaviour"),
        ({"behaviours": [{"behaviour": "page_view"}]}, "body.behaviours.0.lead_id"),
        ({"behaviours": [{"lead_id": "x", "behaviour": "page_view"}] * 1001}, "body.behaviours"),
    ],
)
async def test_bad_bulk_behaviours_are_a_422_naming_the_field(
    leads: Leads, body: dict[str, Any], field: str
) -> None:
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert field in {f["field"] for f in r.json()["fields"]}, r.json()


async def test_bulk_behaviours_roles(leads: Leads) -> None:
    ada = (await leads.capture())["lead"]["id"]
    body = {"behaviours": [{"lead_id": ada, "behaviour": "page_view"}]}
    assert (await leads.client.post("/leads/behaviours/bulk", json=body)).status_code == 401
    for role in ("sales_rep", "sales_manager", "analyst", "service_rep"):
        r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=auth_headers([role], "x"))
        assert r.status_code == 403, role
    r = await leads.client.post("/leads/behaviours/bulk", json=body, headers=auth_headers(["admin"], "root"))
    assert r.status_code == 200, r.text
