"""The service desk end to end over a real broker and a real mongod.

One app per module (consumer, outbox relay, HTTP): won deals are produced onto
``crm.sales.deal-won`` exactly as sales publishes them, and what the desk emits is
read back from its topics. The app's clock is a manual one, so SLA timings are exact.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import Envelope, envelope_for, topics, utcnow
from crm_contracts.events.sales import DealWonV1
from crm_platform.clock import ManualClock
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    eventually,
    produce,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from fastapi import FastAPI
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers_for(roles: list[str], user_id: str, name: str | None = None) -> dict[str, str]:
    """A token whose ``sub`` (the identity the desk uses) is ``user_id``; its display ``name``
    is ``name`` (default: the id), which the desk must never compare."""
    return {"Authorization": f"Bearer {token_for(roles, name or user_id, user_id=user_id)}"}


ADMIN = headers_for(["admin"], "ada.admin")
REP = headers_for(["service_rep"], "rita.rep")
SALES = headers_for(["sales_rep"], "sam.sales")
CSMS = ("carla.csm", "dora.csm")


def csm_headers(username: str) -> dict[str, str]:
    return headers_for(["customer_success_manager"], username)


class Desk:
    """The running app, its clock, and readers on the topics it writes."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, clock: ManualClock, bootstrap: str):
        self.app = app
        self.client = client
        self.clock = clock
        self.bootstrap = bootstrap
        self.events = TopicReader(bootstrap, topics.SERVICE_DESK_EVENTS)
        self.signals = TopicReader(bootstrap, topics.ACCOUNT_SIGNAL)
        self.receipts = TopicReader(bootstrap, topics.HANDOFF_RECEIPTS)
        self.dlq = TopicReader(bootstrap, topics.dead_letter_topic("service-desk"))

    async def start(self) -> None:
        for reader in (self.events, self.signals, self.receipts, self.dlq):
            await reader.start()

    async def stop(self) -> None:
        for reader in (self.events, self.signals, self.receipts, self.dlq):
            await reader.stop()

    async def emitted(self, reader: TopicReader, event_type: str, **match: Any) -> Envelope:
        def find(_: list[Any]) -> Envelope | None:
            for env in reader.envelopes(event_type):
                if all(env.payload.get(k) == v for k, v in match.items()):
                    return env
            return None

        return await reader.wait_for(find, what=f"{event_type} {match}")

    async def account_for_deal(self, deal_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            r = await self.client.get("/accounts", params={"deal_id": deal_id}, headers=ADMIN)
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            return items[0] if items else None

        return await eventually(check, what=f"account for deal {deal_id}")

    async def win(self, deal: DealWonV1) -> dict[str, Any]:
        env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")
        await produce_envelope(self.bootstrap, topics.DEAL_WON, env)
        return await self.account_for_deal(deal.deal_id)

    async def processed(self, event_id: str) -> None:
        db = self.app.state.runtime.db

        async def check() -> bool:
            return await db["processed_events"].find_one({"_id": event_id}) is not None

        await eventually(check, what=f"event {event_id} in the processed ledger")


@pytest.fixture(scope="module")
async def desk(
    desk_settings: Callable[..., ServiceSettings],
    kafka_bootstrap: str,
) -> AsyncIterator[Desk]:
    clock = ManualClock(utcnow())
    settings = desk_settings()
    # The shared test broker holds thousands of other suites' records (the fuzzer's among them).
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app = create_app(settings, clock=clock)
    async with running_app(app) as client:
        d = Desk(app, client, clock, kafka_bootstrap)
        await d.start()
        r = await client.put(
            "/csms",
            json={
                "csms": [{"user_id": u, "active": True} for u in CSMS]
                + [{"user_id": "olga.onleave", "active": False}]
            },
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        try:
            yield d
        finally:
            await d.stop()


# --- deal.won -> account -------------------------------------------------------------------------


async def test_won_deal_becomes_one_account_with_onboarding_and_commitments(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    deal = make_deal()
    env = envelope_for(deal, source="sales", correlation_id="journey-42")
    await produce_envelope(desk.bootstrap, topics.DEAL_WON, env)

    account = await desk.account_for_deal(deal.deal_id)
    assert account["name"] == "Acme GmbH"
    assert account["sales_owner"] == "sam.sales"
    assert account["lead_id"] == deal.lead_id
    assert account["value"] == {"amount": 54000.0, "currency": "EUR"}
    assert account["contacts"][0]["email"] == "ada@acme.example"
    assert account["products"][0]["sku"] == "CRM-ENT"
    assert account["csm"] in CSMS
    assert [(c["commitment_id"], c["status"]) for c in account["commitments"]] == [
        ("c-sso", "open"),
        ("c-sap", "open"),
    ]
    assert account["onboarding"]["status"] == "in_progress"
    assert [i["key"] for i in account["onboarding"]["checklist"]] == [
        "kickoff-call",
        "technical-setup",
        "training",
        "first-value-review",
    ]

    # Match on our own account id: anything else consuming the topic may emit for this deal too.
    started = await desk.emitted(desk.events, "account.onboarding_started", account_id=account["account_id"])
    assert started.payload["deal_id"] == deal.deal_id
    assert started.payload["account_id"] == account["account_id"]
    assert started.payload["csm"] == account["csm"]
    assert started.payload["checklist"] == [
        "Kickoff call",
        "Technical setup",
        "Training",
        "First value review",
    ]
    assert started.correlation_id == "journey-42"
    assert started.causation_id == str(env.event_id)
    receipt = await desk.emitted(desk.receipts, "handoff.received", handoff_event_id=str(env.event_id))
    assert receipt.payload["to_department"] == "customer-success"

    # The same event redelivered, and the same deal announced again under a new event id.
    await produce_envelope(desk.bootstrap, topics.DEAL_WON, env)
    again = envelope_for(deal, source="sales", correlation_id="journey-42")
    await produce_envelope(desk.bootstrap, topics.DEAL_WON, again)
    await desk.processed(str(again.event_id))

    r = await desk.client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)
    assert r.json()["count"] == 1
    assert r.json()["items"][0]["account_id"] == account["account_id"]
    await desk.events.poll()
    starts = desk.events.envelopes("account.onboarding_started")
    assert [e.payload["deal_id"] for e in starts if e.payload["account_id"] == account["account_id"]] == [
        deal.deal_id
    ]


async def test_schema_invalid_deal_won_is_dead_lettered(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    good = envelope_for(make_deal(), source="sales", correlation_id="c-bad")
    payload = {k: v for k, v in good.payload.items() if k != "products"}
    payload["value"] = {"amount": -5, "currency": "EUR"}
    bad = good.model_copy(update={"payload": payload})
    await produce(desk.bootstrap, topics.DEAL_WON, bad.to_bytes(), key=b"k", headers=bad.headers())

    def find(records: list[Any]) -> Any:
        # By header: other suites' dead letters (any bytes at all) share this topic.
        for r in records:
            if dict(r.headers or ()).get("event_id") == str(bad.event_id).encode():
                return r
        return None

    record = await desk.dlq.wait_for(find, what="the dead letter")
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["dlq_reason"] == "schema_invalid"
    assert "products" in headers["dlq_error"]
    assert headers["dlq_source_topic"] == topics.DEAL_WON
    r = await desk.client.get("/accounts", params={"deal_id": good.payload["deal_id"]}, headers=ADMIN)
    assert r.json()["count"] == 0


# --- onboarding -----------------------------------------------------------------------------------


async def test_completing_every_checklist_item_completes_onboarding(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]
    keys = [i["key"] for i in account["onboarding"]["checklist"]]
    for key in keys[:-1]:
        r = await desk.client.post(f"/accounts/{acc_id}/checklist/{key}/complete", headers=csm_headers(csm))
        assert r.status_code == 200, r.text
        assert r.json()["onboarding"]["status"] == "in_progress"

    r = await desk.client.post(f"/accounts/{acc_id}/checklist/{keys[0]}/complete", headers=csm_headers(csm))
    assert r.status_code == 409
    assert "already completed" in r.json()["message"]
    r = await desk.client.post(f"/accounts/{acc_id}/checklist/golf/complete", headers=csm_headers(csm))
    assert r.status_code == 404
    assert "golf" in r.json()["message"]

    desk.clock.advance(days=3)
    r = await desk.client.post(f"/accounts/{acc_id}/checklist/{keys[-1]}/complete", headers=csm_headers(csm))
    assert r.status_code == 200, r.text
    onboarding = r.json()["onboarding"]
    assert onboarding["status"] == "completed"
    assert onboarding["completed_at"] is not None
    assert onboarding["duration_seconds"] >= 3 * 86400
    assert all(i["completed"] and i["completed_by"] == csm for i in onboarding["checklist"])

    done = await desk.emitted(desk.events, "account.onboarding_completed", account_id=acc_id)
    assert done.payload["csm"] == csm
    assert done.payload["duration_seconds"] == onboarding["duration_seconds"]


# --- visibility and roles -------------------------------------------------------------------------


async def test_csms_see_their_own_accounts_reps_see_all_others_are_refused(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]
    other = next(c for c in CSMS if c != csm)

    r = await desk.client.get("/accounts", headers=csm_headers(csm))
    assert r.status_code == 200
    assert acc_id in [a["account_id"] for a in r.json()["items"]]
    assert {a["csm"] for a in r.json()["items"]} == {csm}
    r = await desk.client.get("/accounts", headers=csm_headers(other))
    assert acc_id not in [a["account_id"] for a in r.json()["items"]]
    assert (await desk.client.get(f"/accounts/{acc_id}", headers=csm_headers(other))).status_code == 404
    assert (await desk.client.get(f"/accounts/{acc_id}", headers=csm_headers(csm))).status_code == 200
    assert (await desk.client.get(f"/accounts/{acc_id}", headers=REP)).status_code == 200

    r = await desk.client.get("/accounts", headers=SALES)
    assert r.status_code == 403
    assert "service_rep" in r.json()["message"]
    assert (await desk.client.get("/accounts")).status_code == 401
    assert (await desk.client.get("/accounts/nope", headers=ADMIN)).status_code == 404

    # Handing the account over changes whose book it is in.
    r = await desk.client.put(f"/accounts/{acc_id}/csm", json={"user_id": other}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (await desk.client.get(f"/accounts/{acc_id}", headers=csm_headers(other))).status_code == 200
    r = await desk.client.put(f"/accounts/{acc_id}/csm", json={"user_id": "olga.onleave"}, headers=ADMIN)
    assert r.status_code == 422
    assert "not an active CSM" in r.json()["message"]
    r = await desk.client.put(f"/accounts/{acc_id}/csm", json={"user_id": csm}, headers=REP)
    assert r.status_code == 403


async def test_identity_is_the_tokens_sub_never_its_display_name(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    """A CSM sharing the account CSM's display name, or a token whose ``name`` claim is the
    CSM's user id, sees none of that CSM's accounts or tickets: identity is the ``sub``."""
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]
    as_csm = headers_for(["customer_success_manager"], csm, "Carla Example")
    assert (await desk.client.get(f"/accounts/{acc_id}", headers=as_csm)).status_code == 200
    r = await desk.client.post(
        "/tickets",
        json={"account_id": acc_id, "subject": "SSO", "request": "rejected", "priority": "low"},
        headers=REP,
    )
    assert r.status_code == 201, r.text
    ticket_id = r.json()["ticket_id"]
    assert r.json()["assignee"] == csm

    for other in (
        headers_for(["customer_success_manager"], uuid.uuid4().hex, "Carla Example"),
        headers_for(["customer_success_manager"], uuid.uuid4().hex, csm),
    ):
        assert (await desk.client.get(f"/accounts/{acc_id}", headers=other)).status_code == 404
        r = await desk.client.get("/accounts", headers=other)
        assert r.status_code == 200
        assert acc_id not in [a["account_id"] for a in r.json()["items"]]
        r = await desk.client.get("/accounts", params={"csm": csm}, headers=other)
        assert r.json()["items"] == []
        assert (await desk.client.get(f"/tickets/{ticket_id}", headers=other)).status_code == 404
        r = await desk.client.get("/tickets", headers=other)
        assert ticket_id not in [t["ticket_id"] for t in r.json()["items"]]


# --- tickets --------------------------------------------------------------------------------------


async def test_a_retried_ticket_with_its_idempotency_key_opens_one_ticket(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    body = {"account_id": account["account_id"], "subject": "Retry", "request": "r", "priority": "low"}
    headers = {**REP, "Idempotency-Key": uuid.uuid4().hex}
    first = await desk.client.post("/tickets", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await desk.client.post("/tickets", json=body, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    r = await desk.client.get("/tickets", params={"account_id": account["account_id"]}, headers=REP)
    assert r.json()["count"] == 1


async def test_ticket_open_progress_resolve_rate(desk: Desk, make_deal: Callable[..., DealWonV1]) -> None:
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]

    r = await desk.client.post(
        "/tickets",
        json={
            "account_id": acc_id,
            "subject": "Cannot log in",
            "request": "SSO rejects every user",
            "priority": "urgent",
        },
        headers=REP,
    )
    assert r.status_code == 201, r.text
    ticket = r.json()
    tid = ticket["ticket_id"]
    assert ticket["assignee"] == csm
    assert ticket["opened_by"] == "rita.rep"
    assert ticket["status"] == "open"
    assert ticket["first_response_at"] is None
    assert ticket["sla"]["state"] == "on_track"
    opened = await desk.emitted(desk.events, "ticket.opened", ticket_id=tid)
    assert opened.payload == {
        "ticket_id": tid, "account_id": acc_id, "priority": "urgent", "assignee": csm, "custom": {}
    }  # fmt: skip
    assert opened.schema_version == 2
    assert opened.correlation_id == f"journey-{account['deal_id']}"

    # Urgent: 1 h to the first response (at risk from 45 min), 8 h to resolve.
    desk.clock.advance(minutes=50)
    r = await desk.client.get(f"/tickets/{tid}", headers=REP)
    assert r.json()["sla"]["state"] == "at_risk"

    r = await desk.client.post(f"/tickets/{tid}/csat-survey", headers=REP)
    assert r.status_code == 409  # the CSAT survey goes out once the ticket is resolved
    r = await desk.client.post(f"/tickets/{tid}/rate", json={"csat": 5}, headers=REP)
    assert r.status_code in (404, 405)  # a rep can no longer type the customer's score

    r = await desk.client.post(
        f"/tickets/{tid}/progress", json={"note": "Looking at the IdP logs"}, headers=csm_headers(csm)
    )
    assert r.status_code == 200, r.text
    assert r.json()["first_response_seconds"] == 50 * 60
    first_response_at = r.json()["first_response_at"]
    desk.clock.advance(minutes=30)
    r = await desk.client.post(
        f"/tickets/{tid}/progress", json={"note": "Certificate rotated"}, headers=csm_headers(csm)
    )
    assert r.json()["first_response_at"] == first_response_at
    assert [n["note"] for n in r.json()["progress"]] == ["Looking at the IdP logs", "Certificate rotated"]
    assert r.json()["sla"]["first_response"] == "met"
    assert r.json()["sla"]["state"] == "on_track"

    desk.clock.advance(minutes=40)
    r = await desk.client.post(
        f"/tickets/{tid}/resolve", json={"result": "New certificate installed"}, headers=csm_headers(csm)
    )
    assert r.status_code == 200, r.text
    resolved = r.json()
    assert resolved["status"] == "resolved"
    assert resolved["result"] == "New certificate installed"
    assert resolved["resolution_seconds"] == 120 * 60
    assert resolved["sla"]["state"] is None
    assert (resolved["sla"]["first_response_breached"], resolved["sla"]["resolution_breached"]) == (
        False,
        False,
    )
    event = await desk.emitted(desk.events, "ticket.resolved", ticket_id=tid)
    assert event.payload["first_response_seconds"] == 3000
    assert event.payload["resolution_seconds"] == 7200
    assert event.payload["first_response_breached"] is False
    assert event.payload["resolution_breached"] is False

    r = await desk.client.post(f"/tickets/{tid}/resolve", json={"result": "again"}, headers=REP)
    assert r.status_code == 409
    r = await desk.client.post(f"/tickets/{tid}/progress", json={"note": "late"}, headers=REP)
    assert r.status_code == 409

    # The customer rates through the signed, single-use link (no login).
    r = await desk.client.post(f"/tickets/{tid}/csat-survey", headers=REP)
    assert r.status_code == 201, r.text
    token = r.json()["link"].rsplit("/", 1)[1]
    assert (await desk.client.post(f"/tickets/{tid}/csat-survey", headers=REP)).status_code == 409
    r = await desk.client.get(f"/public/surveys/{token}")
    assert r.status_code == 200, r.text
    assert (r.json()["kind"], r.json()["min_score"], r.json()["max_score"]) == ("csat", 1, 5)
    r = await desk.client.post(f"/public/surveys/{token}", json={"score": 6})
    assert r.status_code == 422
    assert r.json()["details"]["field"] == "score"
    sid, expires, mac = token.split(".")
    forged = f"{sid}.{int(expires) + 3600}.{mac}"
    r = await desk.client.post(f"/public/surveys/{forged}", json={"score": 5})
    assert r.status_code == 403
    assert r.json()["error"] == "survey_link_invalid"
    r = await desk.client.post(f"/public/surveys/{token}", json={"score": 5, "comment": "fast"})
    assert r.status_code == 200, r.text
    r = await desk.client.post(f"/public/surveys/{token}", json={"score": 4})
    assert r.status_code == 409  # a replay
    assert (await desk.client.get(f"/tickets/{tid}", headers=REP)).json()["csat"] == 5
    rated = await desk.emitted(desk.events, "ticket.rated", ticket_id=tid)
    assert rated.payload["csat"] == 5
    answered = await desk.emitted(desk.events, "survey.answered", ticket_id=tid)
    assert (answered.payload["kind"], answered.payload["score"]) == ("csat", 5)
    desk.clock.advance(days=15)  # past the link's 14 days
    r = await desk.client.post(f"/accounts/{acc_id}/nps-survey", headers=REP)
    assert r.status_code == 201, r.text
    nps = r.json()["link"].rsplit("/", 1)[1]
    desk.clock.advance(days=15)
    r = await desk.client.post(f"/public/surveys/{nps}", json={"score": 9})
    assert r.status_code == 410
    r = await desk.client.get(f"/accounts/{acc_id}/health", headers=REP)
    assert r.status_code == 200, r.text
    assert r.json()["current"]["rules_version"] == 1
    assert r.json()["history"]

    r = await desk.client.get("/tickets", params={"account_id": acc_id, "status": "resolved"}, headers=REP)
    assert [t["ticket_id"] for t in r.json()["items"]] == [tid]
    r = await desk.client.get("/tickets", params={"account_id": acc_id, "status": "open"}, headers=REP)
    assert r.json()["items"] == []
    stored = await desk.client.get(f"/tickets/{tid}", headers=csm_headers(csm))
    assert stored.json()["first_response_at"] == first_response_at
    assert stored.json()["resolution_seconds"] == 7200


async def test_ticket_sla_breaches_and_bad_input(desk: Desk, make_deal: Callable[..., DealWonV1]) -> None:
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]
    other = next(c for c in CSMS if c != csm)

    r = await desk.client.post(
        "/tickets",
        json={
            "account_id": acc_id,
            "subject": "Report slow",
            "request": "Takes minutes",
            "priority": "high",
            "assign_to": "me",
        },
        headers=REP,
    )
    assert r.status_code == 201, r.text
    tid = r.json()["ticket_id"]
    assert r.json()["assignee"] == "rita.rep"
    due = r.json()["sla"]
    assert due["state"] == "on_track"

    desk.clock.advance(hours=5)  # high: 4 h first response, 24 h resolution
    r = await desk.client.get("/tickets", params={"account_id": acc_id, "status": "open"}, headers=REP)
    [listed] = r.json()["items"]
    assert listed["sla"]["state"] == "breached"
    assert listed["sla"]["first_response"] == "breached"
    assert listed["sla"]["resolution"] == "on_track"
    # The account's CSM sees the ticket (their account); another CSM does not.
    assert (await desk.client.get(f"/tickets/{tid}", headers=csm_headers(csm))).status_code == 200
    assert (await desk.client.get(f"/tickets/{tid}", headers=csm_headers(other))).status_code == 404
    r = await desk.client.get("/tickets", params={"account_id": acc_id}, headers=csm_headers(other))
    assert r.json()["items"] == []

    desk.clock.advance(hours=20)
    r = await desk.client.post(f"/tickets/{tid}/resolve", json={"result": "Index added"}, headers=REP)
    assert (r.json()["sla"]["first_response_breached"], r.json()["sla"]["resolution_breached"]) == (
        True,
        True,
    )
    event = await desk.emitted(desk.events, "ticket.resolved", ticket_id=tid)
    assert event.payload["first_response_breached"] is True
    assert event.payload["resolution_breached"] is True
    assert event.payload["resolution_seconds"] == 25 * 3600

    bad = [
        ({"account_id": acc_id, "subject": "x", "request": "y", "priority": "whenever"}, "body.priority"),
        ({"account_id": acc_id, "subject": "", "request": "y"}, "body.subject"),
        ({"account_id": acc_id, "subject": "x"}, "body.request"),
    ]
    for body, field in bad:
        r = await desk.client.post("/tickets", json=body, headers=REP)
        assert r.status_code == 422, body
        assert field in [f["field"] for f in r.json()["fields"]]
    r = await desk.client.post(
        "/tickets", json={"account_id": "no-such-account", "subject": "x", "request": "y"}, headers=REP
    )
    assert r.status_code == 422
    assert "unknown account" in r.json()["message"]
    assert (await desk.client.get(f"/tickets/{uuid.uuid4()}", headers=REP)).status_code == 404
    r = await desk.client.get("/tickets", params={"status": "pending"}, headers=REP)
    assert r.status_code == 422


# --- handoffs back to sales -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e309", "Infinity", "NaN", "-1", "0.001", "1e13"])
async def test_a_signal_value_must_be_finite_money(
    desk: Desk, make_deal: Callable[..., DealWonV1], value: str
) -> None:
    # Before: 1e309 / Infinity / NaN were stored and handed to sales, then shown as null.
    account = await desk.win(make_deal())
    r = await desk.client.post(
        f"/accounts/{account['account_id']}/signals",
        content=f'{{"kind": "upsell", "description": "more", "estimated_value": {value}}}',
        headers={**REP, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "body.estimated_value"


async def test_signal_hands_an_upsell_to_the_sales_owner(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal(sales_owner="sue.seller", account_name="Globex"))
    acc_id = account["account_id"]
    r = await desk.client.post(
        f"/accounts/{acc_id}/signals",
        json={"kind": "upsell", "description": "Wants 20 more seats", "estimated_value": 18000},
        headers=REP,
    )
    assert r.status_code == 201, r.text
    signal_id = r.json()["signal_id"]

    env = await desk.emitted(desk.signals, "upsell.spotted", signal_id=signal_id)
    assert env.payload["sales_owner"] == "sue.seller"
    assert env.payload["account_id"] == acc_id
    assert env.payload["deal_id"] == account["deal_id"]
    assert env.payload["account_name"] == "Globex"
    assert env.payload["kind"] == "upsell"
    assert env.payload["estimated_value"] == 18000
    assert env.payload["spotted_by"] == "rita.rep"
    assert env.correlation_id == f"journey-{account['deal_id']}"

    r = await desk.client.get(f"/accounts/{acc_id}", headers=REP)
    assert [s["signal_id"] for s in r.json()["signals"]] == [signal_id]
    r = await desk.client.post(
        f"/accounts/{acc_id}/signals", json={"kind": "cross-sell", "description": "x"}, headers=REP
    )
    assert r.status_code == 422
    assert "body.kind" in [f["field"] for f in r.json()["fields"]]
    r = await desk.client.post(
        "/accounts/nope/signals", json={"kind": "renewal", "description": "x"}, headers=REP
    )
    assert r.status_code == 404


async def test_flagging_a_commitment_hands_the_over_promise_back_to_sales(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    acc_id, csm = account["account_id"], account["csm"]
    r = await desk.client.post(
        f"/accounts/{acc_id}/commitments/c-sso/flag",
        json={"reason": "Azure AD SSO is not on our roadmap"},
        headers=csm_headers(csm),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "flagged"
    flag_id = r.json()["flag_id"]

    env = await desk.emitted(desk.signals, "commitment.flagged", flag_id=flag_id)
    assert env.payload == {
        "flag_id": flag_id,
        "account_id": acc_id,
        "deal_id": account["deal_id"],
        "commitment_id": "c-sso",
        "reason": "Azure AD SSO is not on our roadmap",
        "flagged_by": csm,
    }
    r = await desk.client.get(f"/accounts/{acc_id}", headers=REP)
    statuses = {c["commitment_id"]: c["status"] for c in r.json()["commitments"]}
    assert statuses == {"c-sso": "flagged", "c-sap": "open"}

    r = await desk.client.post(
        f"/accounts/{acc_id}/commitments/c-sso/flag", json={"reason": "again"}, headers=REP
    )
    assert r.status_code == 409
    r = await desk.client.post(
        f"/accounts/{acc_id}/commitments/c-nope/flag", json={"reason": "x"}, headers=REP
    )
    assert r.status_code == 404
    assert "c-nope" in r.json()["message"]
    r = await desk.client.post(f"/accounts/{acc_id}/commitments/c-sso/flag", json={"reason": ""}, headers=REP)
    assert r.status_code == 422

    r = await desk.client.post(f"/accounts/{acc_id}/commitments/c-sap/deliver", headers=csm_headers(csm))
    assert r.status_code == 200
    assert r.json()["status"] == "delivered"
    r = await desk.client.post(f"/accounts/{acc_id}/commitments/c-sap/deliver", headers=csm_headers(csm))
    assert r.status_code == 409
