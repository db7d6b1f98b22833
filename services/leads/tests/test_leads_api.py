"""Leads API against the real mongod and broker: capture and merge, reads, 422s, roles,
behaviour scoring and the qualified handoff emitted exactly once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_EVENTS
from crm_platform.mongo import OUTBOX, outbox_events_pipeline
from crm_platform.testing import TopicReader, auth_headers, eventually, opened_payload

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads (conftest is not importable in importlib mode)

MARKETING = auth_headers(["marketing"], "mia")
ADMIN = auth_headers(["admin"], "root")
SALES_REP = auth_headers(["sales_rep"], "sam")
SALES_MANAGER = auth_headers(["sales_manager"], "sue")
ANALYST = auth_headers(["analyst"], "ann")
SERVICE_REP = auth_headers(["service_rep"], "sid")


def unique_email(prefix: str = "lead") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def field_names(body: dict[str, Any]) -> set[str]:
    return {f["field"] for f in body.get("fields", [])}


# -- capture and merge -----------------------------------------------------------------------


async def test_capture_creates_a_lead_with_normalized_email(leads: Leads) -> None:
    email = unique_email("Ada")
    r = await leads.client.post(
        "/leads",
        headers=MARKETING,
        json={
            "name": " Ada Lovelace ",
            "email": f"  {email.upper()} ",
            "company": "Engines",
            "source_channel": "Web_Form",
            "campaign": "spring",
            "consent": {"marketing_email": False},
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["merged"] is False
    lead = body["lead"]
    assert lead["email"] == email.lower()
    assert lead["name"] == "Ada Lovelace"
    assert lead["source_channel"] == "web_form"
    assert lead["status"] == "new"
    assert lead["score"] == 0
    assert lead["consent"]["marketing_email"] is False
    assert lead["touch_count"] == 1
    assert await leads.lead(lead["id"]) == lead


async def test_same_email_twice_merges_into_one_lead(leads: Leads, kafka_bootstrap: str) -> None:
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        email = unique_email()
        first = await leads.client.post(
            "/leads",
            headers=MARKETING,
            json={
                "name": "Ada",
                "email": email,
                "source_channel": "webinar",
                "consent": {"marketing_email": True},
            },
        )
        assert first.status_code == 201, first.text
        second = await leads.client.post(
            "/leads",
            headers=ADMIN,
            json={
                "name": "Ada L.",
                "email": f"  {email.upper()}\t",
                "company": "Engines Ltd",
                "source_channel": "trade_show",
                "campaign": "expo",
                "consent": {"marketing_email": False},
            },
        )
        assert second.status_code == 200, second.text
        assert second.json()["merged"] is True
        lead = second.json()["lead"]
        assert lead["id"] == first.json()["lead"]["id"]
        assert lead["name"] == "Ada"  # filled fields are kept
        assert lead["company"] == "Engines Ltd"  # empty fields are filled
        assert lead["campaign"] == "expo"
        assert lead["source_channel"] == "webinar"  # the first channel stays the origin
        assert [t["channel"] for t in lead["touches"]] == ["webinar", "trade_show"]
        assert lead["touch_count"] == 2
        assert lead["consent"]["marketing_email"] is False  # the latest statement

        page = (await leads.client.get("/leads?limit=200", headers=MARKETING)).json()
        assert [x["id"] for x in page["items"] if x["email"] == email] == [lead["id"]]

        def captured(_: list[Any]) -> list[Envelope] | None:
            envs = [e for e in reader.envelopes("lead.captured") if e.partition_key == lead["id"]]
            return envs if len(envs) >= 2 else None

        envs = await reader.wait_for(captured, what="two lead.captured events")
        assert [e.payload["merged"] for e in envs] == [False, True]
        assert [e.payload["source_channel"] for e in envs] == ["webinar", "trade_show"]
        assert all(e.correlation_id == lead["id"] for e in envs)
    finally:
        await reader.stop()


async def test_concurrent_captures_of_one_email_make_one_lead(leads: Leads) -> None:
    email = unique_email()
    body = {"name": "Ada", "email": email, "source_channel": "api", "consent": {"marketing_email": True}}
    responses = await asyncio.gather(
        *[leads.client.post("/leads", json=body, headers=MARKETING) for _ in range(5)]
    )
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    assert len({r.json()["lead"]["id"] for r in responses}) == 1
    assert sum(r.json()["merged"] for r in responses) == 4


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"email": "not-an-email"}, {"body.email"}),
        ({"email": None}, {"body.email"}),
        ({"name": "   "}, {"body.name"}),
        ({"name": "x" * 201}, {"body.name"}),
        ({"source_channel": "web form!"}, {"body.source_channel"}),
        ({"consent": {"marketing_email": "maybe"}}, {"body.consent.marketing_email"}),
        ({"consent": {}}, {"body.consent.marketing_email"}),
        ({"consnet": {"marketing_email": True}}, {"body.consnet"}),
    ],
)
async def test_bad_capture_is_a_422_naming_the_field(
    leads: Leads, change: dict[str, Any], fields: set[str]
) -> None:
    body: dict[str, Any] = {
        "name": "Ada",
        "email": unique_email(),
        "source_channel": "web",
        "consent": {"marketing_email": True},
    }
    body.update(change)
    r = await leads.client.post("/leads", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert fields <= field_names(r.json()), r.json()
    assert r.json()["error"] == "validation_error"


async def test_missing_fields_are_each_named(leads: Leads) -> None:
    r = await leads.client.post("/leads", json={}, headers=MARKETING)
    assert r.status_code == 422
    assert {"body.name", "body.email", "body.source_channel", "body.consent"} <= field_names(r.json())


# -- reads -------------------------------------------------------------------------------------


async def test_unknown_lead_is_404(leads: Leads) -> None:
    r = await leads.client.get("/leads/nope", headers=ANALYST)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    r = await leads.client.post("/leads/nope/behaviours", json={"behaviour": "page_view"}, headers=MARKETING)
    assert r.status_code == 404


async def test_list_filters_by_status_and_channel_newest_first_with_paging(leads: Leads) -> None:
    channel = f"ch-{uuid.uuid4().hex[:8]}"
    ids = [(await leads.capture(source_channel=channel))["lead"]["id"] for _ in range(5)]
    await leads.behave(ids[1], "page_view")

    r = await leads.client.get(f"/leads?channel={channel}&limit=2", headers=SALES_MANAGER)
    assert r.status_code == 200, r.text
    seen, page = [], r.json()
    seen += [x["id"] for x in page["items"]]
    while page["next_cursor"]:
        page = (
            await leads.client.get(
                "/leads",
                params={"channel": channel, "limit": 2, "cursor": page["next_cursor"]},
                headers=SALES_MANAGER,
            )
        ).json()
        assert len(page["items"]) <= 2
        seen += [x["id"] for x in page["items"]]
    assert seen == list(reversed(ids))  # newest first, every lead exactly once

    nurturing = (await leads.client.get(f"/leads?channel={channel}&status=nurturing", headers=ANALYST)).json()
    assert [x["id"] for x in nurturing["items"]] == [ids[1]]
    assert nurturing["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "query.status"),
        ("limit=0", "query.limit"),
        ("limit=1000", "query.limit"),
        ("channel=" + "x" * 65, "query.channel"),
    ],
)
async def test_bad_list_query_is_a_422_naming_it(leads: Leads, query: str, field: str) -> None:
    r = await leads.client.get(f"/leads?{query}", headers=MARKETING)
    assert r.status_code == 422
    assert field in field_names(r.json())


async def test_empty_filters_mean_no_filter(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    r = await leads.client.get("/leads?status=&channel=&limit=5", headers=ANALYST)
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["id"] == lead["id"]  # newest first


async def test_bad_cursor_is_a_422(leads: Leads) -> None:
    r = await leads.client.get("/leads?cursor=garbage", headers=MARKETING)
    assert r.status_code == 422
    assert "cursor" in r.json()["message"]


# -- roles -------------------------------------------------------------------------------------


async def test_roles(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    body = {
        "name": "X",
        "email": unique_email(),
        "source_channel": "web",
        "consent": {"marketing_email": True},
    }
    assert (await leads.client.post("/leads", json=body)).status_code == 401
    for headers in (SALES_REP, SALES_MANAGER, ANALYST, SERVICE_REP):
        assert (await leads.client.post("/leads", json=body, headers=headers)).status_code == 403
        r = await leads.client.post(
            f"/leads/{lead['id']}/behaviours", json={"behaviour": "page_view"}, headers=headers
        )
        assert r.status_code == 403
    for headers in (SALES_REP, SALES_MANAGER, ANALYST, MARKETING, ADMIN):
        assert (await leads.client.get("/leads?limit=1", headers=headers)).status_code == 200
    for headers in (SALES_MANAGER, ANALYST, MARKETING, ADMIN):
        assert (await leads.client.get(f"/leads/{lead['id']}", headers=headers)).status_code == 200
    # a rep reads only the leads sales assigned to them (test_leads_assigned_reps.py)
    assert (await leads.client.get(f"/leads/{lead['id']}", headers=SALES_REP)).status_code == 403
    assert (await leads.client.get(f"/leads/{lead['id']}", headers=SERVICE_REP)).status_code == 403


# -- behaviour and the handoff -----------------------------------------------------------------


async def test_behaviour_rescores_with_reasons(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    out = await leads.behave(lead["id"], "page_view", "page_view", "email_open")
    assert out["lead"]["status"] == "nurturing"
    assert out["lead"]["score"] == 13
    assert out["lead"]["rules_version"] == 1
    assert [(r["behaviour"], r["count"], r["points"]) for r in out["lead"]["score_reasons"]] == [
        ("page_view", 2, 10.0),
        ("email_open", 1, 3.0),
    ]
    r = await leads.client.get(f"/leads/{lead['id']}/behaviours", headers=ANALYST)
    assert [b["behaviour"] for b in r.json()["items"]] == ["email_open", "page_view", "page_view"]
    assert r.json()["items"][0]["recorded_by"] == "mia"


async def test_behaviour_with_time_and_meta_and_a_retried_external_id(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    body = {
        "behaviour": "form_submit",
        "occurred_at": "2026-01-05T10:00:00Z",
        "meta": {"form": "demo-request", "fields": 4},
        "external_id": "evt-123",
    }
    first = await leads.client.post(f"/leads/{lead['id']}/behaviours", json=body, headers=MARKETING)
    assert first.status_code == 201, first.text
    again = await leads.client.post(f"/leads/{lead['id']}/behaviours", json=body, headers=MARKETING)
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["behaviour_id"] == first.json()["behaviour_id"]
    assert again.json()["lead"]["score"] == first.json()["lead"]["score"] == 20
    items = (await leads.client.get(f"/leads/{lead['id']}/behaviours", headers=MARKETING)).json()
    assert len(items["items"]) == 1
    assert items["items"][0]["meta"] == {"form": "demo-request", "fields": 4}
    assert items["items"][0]["occurred_at"].startswith("2026-01-05T10:00:00")


@pytest.mark.parametrize("number", ["1e309", "Infinity", "-Infinity", "NaN"])
async def test_non_finite_meta_numbers_are_a_422(leads: Leads, number: str) -> None:
    # Before: accepted, stored, and returned as null.
    lead = (await leads.capture())["lead"]
    r = await leads.client.post(
        f"/leads/{lead['id']}/behaviours",
        content=f'{{"behaviour": "page_view", "meta": {{"n": {number}}}}}',
        headers={**MARKETING, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "body.meta.n" in field_names(r.json())


async def test_occurred_at_with_an_offset_is_stored_in_utc(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    body = {"behaviour": "page_view", "occurred_at": "2026-01-05T12:00:00.123456+02:00"}
    r = await leads.client.post(f"/leads/{lead['id']}/behaviours", json=body, headers=MARKETING)
    assert r.status_code == 201, r.text
    assert r.json()["lead"]["last_behaviour_at"] == "2026-01-05T10:00:00.123000Z"
    assert (await leads.lead(lead["id"]))["last_behaviour_at"] == "2026-01-05T10:00:00.123000Z"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"behaviour": "tweet"}, "body.behaviour"),
        ({}, "body.behaviour"),
        ({"behaviour": "page_view", "occurred_at": "2999-01-01T00:00:00Z"}, "body.occurred_at"),
        ({"behaviour": "page_view", "occurred_at": "yesterday"}, "body.occurred_at"),
        ({"behaviour": "page_view", "meta": {"a": {"nested": 1}}}, "body.meta.a"),
        ({"behaviour": "page_view", "meta": "x"}, "body.meta"),
        # Before: a datetime overflow converting to UTC (500), and BSON refusing 2^64 (500).
        ({"behaviour": "page_view", "occurred_at": "0001-01-01T00:00:00+01:00"}, "body.occurred_at"),
        ({"behaviour": "page_view", "occurred_at": "9999-12-31T23:59:59-01:00"}, "body.occurred_at"),
        ({"behaviour": "page_view", "occurred_at": "2026-01-05T10:00:00"}, "body.occurred_at"),
        ({"behaviour": "page_view", "occurred_at": 12}, "body.occurred_at"),
        ({"behaviour": "page_view", "meta": {"big": 2**64}}, "body.meta.big"),
    ],
)
async def test_bad_behaviour_is_a_422_naming_the_field(
    leads: Leads, body: dict[str, Any], field: str
) -> None:
    lead = (await leads.capture())["lead"]
    r = await leads.client.post(f"/leads/{lead['id']}/behaviours", json=body, headers=MARKETING)
    assert r.status_code == 422, r.text
    assert any(f.startswith(field) for f in field_names(r.json())), r.json()


async def test_crossing_the_threshold_emits_lead_qualified_exactly_once(
    leads: Leads, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, LEAD_QUALIFIED, LEADS_EVENTS).start()
    try:
        # No marketing consent: the lead still qualifies, and consent travels with it.
        captured = await leads.capture(
            company="Engines", campaign="spring", source_channel="webinar", consent={"marketing_email": False}
        )
        lead_id = captured["lead"]["id"]
        steps = [
            await leads.behave(lead_id, b) for b in ("page_view", "email_open", "form_submit", "trial_signup")
        ]
        assert [s["qualified_now"] for s in steps] == [False, False, False, True]
        assert steps[-1]["lead"]["status"] == "qualified"
        assert steps[-1]["lead"]["score"] == 68
        after = [await leads.behave(lead_id, b) for b in ("trial_signup", "page_view")]
        assert not any(s["qualified_now"] for s in after)
        assert after[-1]["lead"]["handoff_count"] == 1
        assert after[-1]["lead"]["status"] == "qualified"

        def last_behaviour_seen(_: list[Any]) -> bool:
            envs = [e for e in reader.envelopes("lead.behaviour_recorded") if e.partition_key == lead_id]
            return len(envs) == 6

        await reader.wait_for(last_behaviour_seen, what="all six behaviour events")
        await eventually(lambda: _nothing_pending(leads), what="outbox drained")
        await reader.read_to_end()  # all the drained outbox published, not one poll's worth
        handoffs = [e for e in reader.envelopes("lead.qualified") if e.partition_key == lead_id]
        assert len(handoffs) == 1, "handed to sales exactly once"
        assert await stored_handoffs(leads, lead_id) == 1

        env = handoffs[0]
        assert env.schema_version == 2, "sealed (crm_platform.shredding)"
        assert captured["lead"]["email"] not in env.model_dump_json()
        event = LeadQualifiedV1.model_validate(await opened_payload(leads.runtime.db, env))
        assert env.source == "leads"
        assert env.correlation_id == lead_id
        assert event.contact.email == captured["lead"]["email"]
        assert event.contact.name == "Ada Lovelace"
        assert event.company == "Engines"
        assert event.score == 68
        assert event.threshold == 60
        assert {(r.behaviour.value, r.count, r.points) for r in event.score_reasons} == {
            ("page_view", 1, 5.0),
            ("email_open", 1, 3.0),
            ("form_submit", 1, 20.0),
            ("trial_signup", 1, 40.0),
        }
        assert event.source_channel == "webinar"
        assert event.campaign == "spring"
        assert {b.value: n for b, n in event.behaviour_summary.items()} == {
            "page_view": 1,
            "email_open": 1,
            "form_submit": 1,
            "trial_signup": 1,
        }
        assert event.consent.marketing_email is False
        assert event.qualified_at.isoformat()[:19] == steps[-1]["lead"]["qualified_at"][:19]
    finally:
        await reader.stop()


async def test_concurrent_behaviours_crossing_the_threshold_hand_off_once(leads: Leads) -> None:
    lead = (await leads.capture())["lead"]
    await leads.behave(lead["id"], "form_submit", "form_submit")  # 40 of 60
    responses = await asyncio.gather(
        *[
            # Six distinct occurrences (each its own key; identical content without one
            # would be taken as retries of one POST).
            leads.client.post(
                f"/leads/{lead['id']}/behaviours",
                json={"behaviour": "trial_signup"},
                headers={**MARKETING, "Idempotency-Key": f"occurrence-{i}"},
            )
            for i in range(6)
        ]
    )
    assert [r.status_code for r in responses] == [201] * 6
    assert sum(r.json()["qualified_now"] for r in responses) == 1
    after = await leads.lead(lead["id"])
    assert after["handoff_count"] == 1
    assert after["behaviour_totals"] == {"form_submit": 2, "trial_signup": 6}
    assert await stored_handoffs(leads, lead["id"]) == 1


async def stored_handoffs(leads: Leads, lead_id: str) -> int:
    """The lead's handoffs in the outbox: rows of their own or items of batch rows (a lone
    qualifying behaviour's events share one row)."""
    pipeline = outbox_events_pipeline({"event_type": "lead.qualified", "key": lead_id})
    return len(await (await leads.runtime.db[OUTBOX].aggregate(pipeline)).to_list())


async def _nothing_pending(leads: Leads) -> bool:
    return await leads.runtime.db[OUTBOX].count_documents({"published": False}) == 0


async def test_ops_endpoints(leads: Leads) -> None:
    assert (await leads.client.get("/healthz")).json() == {"status": "ok", "service": "leads"}
    ready = await leads.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    metrics = (await leads.client.get("/metrics")).text
    assert "crm_leads_captured_total" in metrics
