"""Shared fixtures: the platform's test plugin and builders of a customer journey."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.common import Behaviour, Consent, Contact, Money
from crm_contracts.events.leads import BehaviourRecordedV1, LeadCapturedV1, LeadQualifiedV1
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import DealWonV1, LeadVerdictV1, Product, RejectReason, Verdict
from crm_contracts.events.service_desk import OnboardingStartedV1, OnboardingStepCompletedV1

pytest_plugins = ["crm_platform.testing"]


@pytest.fixture(autouse=True)
def worker_stops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException | None]]:
    """Every ``AnalyticsWorker`` built in a test stops by recording why, not by its production stop
    (``analytics.worker.stop_the_process``: a SIGTERM to its own process, which would end the
    whole pytest run with no report). A test that expects its worker to give up takes the
    reasons from this list (``worker_stops.clear()``); any left fail the test, naming the cause."""
    from analytics import worker

    stops: list[BaseException | None] = []
    monkeypatch.setattr(worker, "stop_the_process", stops.append)
    yield stops
    if stops:
        pytest.fail(
            "the analytics worker gave up in this test (crash-looping; in production it stops its "
            "process): " + "".join(_described(reason) for reason in stops),
            pytrace=False,
        )


def _described(reason: BaseException | None) -> str:
    return "no reason" if reason is None else "\n" + "".join(traceback.format_exception(reason))


# Recent, so journeys stay within the contracts' plausible-time window whenever the
# suite runs (an event years old or in the future is dead-lettered).
T0 = (datetime.now(UTC) - timedelta(days=30)).replace(hour=9, minute=0, second=0, microsecond=0)


def at(seconds: float, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def captured(lead_id, channel="web", *, when=0.0, merged=False, base=T0) -> Envelope:
    event = LeadCapturedV1(
        lead_id=lead_id,
        email=f"{lead_id}@example.com",
        name="Ada",
        company="Acme",
        source_channel=channel,
        consent=Consent(marketing_email=True),
        merged=merged,
    )
    return envelope_for(event, source="leads", correlation_id=lead_id, occurred_at=at(when, base))


def behaviour(lead_id, channel="web", *, when=0.0, base=T0) -> Envelope:
    event = BehaviourRecordedV1(
        lead_id=lead_id, behaviour=Behaviour.PAGE_VIEW, score=3, source_channel=channel
    )
    return envelope_for(event, source="leads", correlation_id=lead_id, occurred_at=at(when, base))


def qualified(lead_id, channel="web", *, when=60.0, base=T0) -> Envelope:
    event = LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ada", email=f"{lead_id}@example.com"),
        company="Acme",
        score=80,
        threshold=50,
        score_reasons=[],
        source_channel=channel,
        behaviour_summary={},
        consent=Consent(marketing_email=True),
        qualified_at=at(when, base),
    )
    return envelope_for(event, source="leads", correlation_id=lead_id, occurred_at=at(when, base))


def verdict(lead_id, outcome="accepted", *, when=360.0, base=T0) -> Envelope:
    event = LeadVerdictV1(
        lead_id=lead_id,
        verdict=Verdict(outcome),
        decided_by="rep-1",
        reason_code=RejectReason.NO_BUDGET if outcome == "rejected" else None,
    )
    return envelope_for(event, source="sales", correlation_id=lead_id, occurred_at=at(when, base))


def won(deal_id, lead_id, *, when=3600.0, base=T0) -> Envelope:
    event = DealWonV1(
        deal_id=deal_id,
        lead_id=lead_id,
        account_name="Acme",
        contacts=[Contact(name="Ada", email="ada@example.com")],
        products=[Product(sku="crm", name="CRM", quantity=1, unit_price=1000)],
        value=Money(amount=1000),
        commitments=[],
        sales_owner="rep-1",
        won_at=at(when, base),
    )
    return envelope_for(event, source="sales", correlation_id=lead_id or deal_id, occurred_at=at(when, base))


def onboarded(deal_id, account_id="acc-1", *, when=7200.0, base=T0) -> Envelope:
    event = OnboardingStartedV1(
        account_id=account_id,
        deal_id=deal_id,
        account_name="Acme",
        csm="csm-1",
        checklist=["kickoff"],
    )
    return envelope_for(event, source="service-desk", correlation_id=deal_id, occurred_at=at(when, base))


def first_step(deal_id, account_id="acc-1", *, when=9000.0, base=T0) -> Envelope:
    """The CSM's first onboarding step: what ends deal-won's business latency."""
    event = OnboardingStepCompletedV1(
        account_id=account_id,
        deal_id=deal_id,
        item="kickoff",
        completed_by="csm-1",
        completed_at=at(when, base),
        remaining=0,
    )
    return envelope_for(event, source="service-desk", correlation_id=deal_id, occurred_at=at(when, base))


SERVICE_OF_DEPARTMENT = {"marketing": "leads", "sales": "sales", "customer-success": "service-desk"}
HANDOFF_EVENT_TYPES = {
    "lead-qualified": ("lead.qualified", "marketing", "sales"),
    "lead-verdict": ("lead.verdict", "sales", "marketing"),
    "deal-won": ("deal.won", "sales", "customer-success"),
    "upsell-spotted": ("upsell.spotted", "customer-success", "sales"),
    "commitment-flagged": ("commitment.flagged", "customer-success", "sales"),
}


def receipt(handoff, handoff_event_id, latency, *, when=0.0, base=T0) -> Envelope:
    event_type, sender, receiver = HANDOFF_EVENT_TYPES[handoff]
    event = HandoffReceivedV1(
        handoff=handoff,
        handoff_event_id=handoff_event_id,
        handoff_event_type=event_type,
        from_department=sender,
        to_department=receiver,
        occurred_at=at(when, base),
        stored_at=at(when + latency, base),
        transport_latency_seconds=latency,
    )
    return envelope_for(
        event,
        source=SERVICE_OF_DEPARTMENT[receiver],  # receipts come from the receiving service
        correlation_id=handoff_event_id,
        occurred_at=at(when + latency, base),
    )


@pytest.fixture
def journey() -> SimpleNamespace:
    """The builders above: ``journey.captured("lead-1", "web", when=0)`` etc."""
    return SimpleNamespace(
        T0=T0,
        at=at,
        captured=captured,
        behaviour=behaviour,
        qualified=qualified,
        verdict=verdict,
        won=won,
        onboarded=onboarded,
        first_step=first_step,
        receipt=receipt,
    )
