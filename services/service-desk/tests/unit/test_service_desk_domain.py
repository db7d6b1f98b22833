"""The service desk's rules, without I/O: accounts from deals, onboarding, tickets, SLA, CSAT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import Commitment, DealWonV1, Product
from crm_contracts.events.service_desk import SignalKind
from crm_platform.clock import ManualClock
from crm_platform.errors import Conflict, NotFound, RuleViolation
from pydantic import ValidationError
from service_desk.domain.access import can_see_account, can_see_ticket, sees_all
from service_desk.domain.accounts import (
    Account,
    CommitmentStatus,
    OnboardingStatus,
    account_from_deal,
)
from service_desk.domain.config import (
    DEFAULT_CHECKLIST,
    Priority,
    ServiceDeskConfig,
    SlaTarget,
    default_config,
    slugify,
)
from service_desk.domain.roster import CsmEntry, active_csms, round_robin, validate_roster
from service_desk.domain.tickets import (
    SlaState,
    Ticket,
    TicketStatus,
    open_ticket,
    sla_view,
    target_state,
    validate_csat,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _deal(**overrides: object) -> DealWonV1:
    values: dict[str, object] = {
        "deal_id": "deal-1",
        "lead_id": "lead-1",
        "account_name": "Acme GmbH",
        "contacts": [Contact(name="Ada", email="ada@acme.example", role="CTO")],
        "products": [Product(sku="CRM-ENT", name="CRM Enterprise", quantity=50, unit_price=90.0)],
        "value": Money(amount=54000.0, currency="EUR"),
        "commitments": [
            Commitment(commitment_id="c-1", description="SSO with their Azure AD by go-live"),
            Commitment(commitment_id="c-2", description="Custom SAP export", due_date=T0),
        ],
        "sales_owner": "sam.sales",
        "won_at": T0 - timedelta(days=1),
    }
    values.update(overrides)
    return DealWonV1.model_validate(values)


def _account(csm: str | None = "carla") -> Account:
    return account_from_deal(
        _deal(), account_id="acc-1", csm=csm, checklist=DEFAULT_CHECKLIST, now=T0, journey_id="journey-1"
    )


# --- accounts from deals -------------------------------------------------------------------------


def test_account_from_deal_keeps_everything_sales_handed_over() -> None:
    acc = account_from_deal(
        _deal(), account_id="acc-1", csm="carla", checklist=DEFAULT_CHECKLIST, now=T0, journey_id="journey-1"
    )
    assert acc.deal_id == "deal-1"
    assert acc.lead_id == "lead-1"
    assert acc.name == "Acme GmbH"
    assert acc.contacts[0].email == "ada@acme.example"
    assert acc.contacts[0].role == "CTO"
    assert acc.products[0].sku == "CRM-ENT"
    assert acc.products[0].quantity == 50
    assert (acc.value.amount, acc.value.currency) == (54000.0, "EUR")
    assert acc.sales_owner == "sam.sales"
    assert acc.csm == "carla"
    assert acc.journey_id == "journey-1"
    assert [(c.commitment_id, c.status) for c in acc.commitments] == [
        ("c-1", CommitmentStatus.OPEN),
        ("c-2", CommitmentStatus.OPEN),
    ]
    assert acc.commitments[1].due_date == T0
    assert acc.onboarding.status == OnboardingStatus.IN_PROGRESS
    assert acc.onboarding.started_at == T0
    assert [i.key for i in acc.onboarding.checklist] == [
        "kickoff-call",
        "technical-setup",
        "training",
        "first-value-review",
    ]


def test_account_from_deal_without_commitments_or_csm() -> None:
    acc = account_from_deal(_deal(commitments=[]), account_id="a", csm=None, checklist=["Kickoff"], now=T0)
    assert acc.commitments == []
    assert acc.csm is None
    assert [i.title for i in acc.onboarding.checklist] == ["Kickoff"]


# --- onboarding ----------------------------------------------------------------------------------


def test_onboarding_completes_when_the_last_item_is_ticked() -> None:
    acc = _account()
    keys = [i.key for i in acc.onboarding.checklist]
    for n, key in enumerate(keys[:-1]):
        assert acc.complete_item(key, by="carla", now=T0 + timedelta(days=n)) is None
    assert acc.onboarding.status == OnboardingStatus.IN_PROGRESS
    done_at = T0 + timedelta(days=10)
    assert acc.complete_item(keys[-1], by="carla", now=done_at) is not None
    assert acc.onboarding.status == OnboardingStatus.COMPLETED
    assert acc.onboarding.completed_at == done_at
    assert acc.onboarding.duration_seconds == 10 * 86400
    item = acc.onboarding.checklist[0]
    assert item.completed_by == "carla"
    assert item.completed_at == T0


def test_checklist_item_unknown_or_twice() -> None:
    acc = _account()
    with pytest.raises(NotFound, match="no checklist item 'golf'"):
        acc.complete_item("golf", by="carla", now=T0)
    acc.complete_item("training", by="carla", now=T0)
    with pytest.raises(Conflict, match="already completed"):
        acc.complete_item("training", by="carla", now=T0)


# --- commitments and signals ---------------------------------------------------------------------


def test_flag_commitment_marks_it_flagged_once() -> None:
    acc = _account()
    c = acc.flag_commitment(
        "c-1", flag_id="f-1", reason=" Azure AD SSO is not on the roadmap ", by="carla", now=T0
    )
    assert c.status == CommitmentStatus.FLAGGED
    assert (c.flag_id, c.flag_reason, c.flagged_by, c.flagged_at) == (
        "f-1",
        "Azure AD SSO is not on the roadmap",
        "carla",
        T0,
    )
    with pytest.raises(Conflict, match="already flagged"):
        acc.flag_commitment("c-1", flag_id="f-2", reason="again", by="carla", now=T0)


def test_flag_unknown_commitment_or_blank_reason() -> None:
    acc = _account()
    with pytest.raises(NotFound, match="no commitment 'c-9'"):
        acc.flag_commitment("c-9", flag_id="f", reason="x", by="carla", now=T0)
    with pytest.raises(RuleViolation, match="reason"):
        acc.flag_commitment("c-1", flag_id="f", reason="  ", by="carla", now=T0)


def test_deliver_commitment_open_or_flagged_but_not_twice() -> None:
    acc = _account()
    acc.flag_commitment("c-1", flag_id="f", reason="late", by="carla", now=T0)
    assert acc.deliver_commitment("c-1", by="carla", now=T0).status == CommitmentStatus.DELIVERED
    assert acc.deliver_commitment("c-2", by="carla", now=T0).status == CommitmentStatus.DELIVERED
    with pytest.raises(Conflict, match="already delivered"):
        acc.deliver_commitment("c-2", by="carla", now=T0)
    with pytest.raises(Conflict, match="already delivered"):
        acc.flag_commitment("c-2", flag_id="f", reason="x", by="carla", now=T0)


def test_spot_signal_is_recorded_on_the_account() -> None:
    acc = _account()
    s = acc.spot_signal(
        signal_id="s-1",
        kind=SignalKind.UPSELL,
        description=" 20 more seats ",
        estimated_value=Decimal("18000.00"),
        by="rita",
        now=T0,
    )
    assert (s.kind, s.description, s.estimated_value, s.spotted_by) == (
        SignalKind.UPSELL,
        "20 more seats",
        18000.0,
        "rita",
    )
    assert acc.signals == [s]
    with pytest.raises(RuleViolation, match="description"):
        acc.spot_signal(
            signal_id="s-2", kind=SignalKind.RENEWAL, description=" ", estimated_value=None, by="rita", now=T0
        )
    with pytest.raises(RuleViolation, match="estimated_value"):
        acc.spot_signal(
            signal_id="s-3",
            kind=SignalKind.RENEWAL,
            description="renew",
            estimated_value=Decimal(-1),
            by="rita",
            now=T0,
        )


# --- roster and round robin ----------------------------------------------------------------------


def test_round_robin_cycles_through_active_csms_in_name_order() -> None:
    active = ["zoe", "carla", "bob"]
    assert [round_robin(active, n) for n in range(5)] == ["bob", "carla", "zoe", "bob", "carla"]
    assert round_robin([], 3) is None


def test_roster_is_sorted_unique_and_knows_who_is_active() -> None:
    roster = validate_roster(
        [CsmEntry(user_id="zoe"), CsmEntry(user_id=" bob ", active=False), CsmEntry(user_id="carla")]
    )
    assert [e.user_id for e in roster] == ["bob", "carla", "zoe"]
    assert active_csms(roster) == ["carla", "zoe"]
    with pytest.raises(RuleViolation, match="listed twice"):
        validate_roster([CsmEntry(user_id="zoe"), CsmEntry(user_id="zoe", active=False)])
    with pytest.raises(ValidationError):
        CsmEntry(user_id="   ")


# --- config --------------------------------------------------------------------------------------


def test_default_config_has_the_documented_targets() -> None:
    cfg = default_config()
    assert cfg.onboarding_checklist == list(DEFAULT_CHECKLIST)
    assert cfg.target(Priority.URGENT) == SlaTarget(first_response_hours=1, resolution_hours=8)
    assert cfg.target(Priority.HIGH) == SlaTarget(first_response_hours=4, resolution_hours=24)
    assert cfg.target(Priority.NORMAL) == SlaTarget(first_response_hours=8, resolution_hours=72)
    assert cfg.target(Priority.LOW) == SlaTarget(first_response_hours=24, resolution_hours=120)


def test_config_rejects_missing_priorities_duplicate_items_and_inverted_targets() -> None:
    sla = default_config().sla
    with pytest.raises(ValidationError, match="missing for priorities: low"):
        ServiceDeskConfig(onboarding_checklist=["a"], sla={p: t for p, t in sla.items() if p != Priority.LOW})
    with pytest.raises(ValidationError, match="duplicates another item"):
        ServiceDeskConfig(onboarding_checklist=["Kickoff call", "kickoff  CALL"], sla=sla)
    with pytest.raises(ValidationError, match="at least one letter"):
        ServiceDeskConfig(onboarding_checklist=["!!!"], sla=sla)
    with pytest.raises(ValidationError, match="at least first_response_hours"):
        SlaTarget(first_response_hours=8, resolution_hours=2)
    assert slugify("First value review!") == "first-value-review"


# --- tickets and SLA -----------------------------------------------------------------------------


def _ticket(priority: Priority = Priority.URGENT, now: datetime = T0) -> Ticket:
    return open_ticket(
        ticket_id="t-1",
        account_id="acc-1",
        account_name="Acme",
        subject=" VPN down ",
        request="Nobody can log in",
        priority=priority,
        opened_by="rita",
        assignee="carla",
        target=default_config().target(priority),
        now=now,
    )


def test_open_ticket_stores_due_times_from_the_priority_target() -> None:
    t = _ticket(Priority.HIGH)
    assert t.subject == "VPN down"
    assert t.status == TicketStatus.OPEN
    assert t.first_response_due_at == T0 + timedelta(hours=4)
    assert t.resolution_due_at == T0 + timedelta(hours=24)
    with pytest.raises(RuleViolation, match="subject"):
        open_ticket(
            ticket_id="t",
            account_id="a",
            account_name="A",
            subject=" ",
            request="r",
            priority=Priority.LOW,
            opened_by="r",
            assignee="r",
            target=default_config().target(Priority.LOW),
            now=T0,
        )


def test_lifecycle_progress_then_resolve_within_sla() -> None:
    clock = ManualClock(T0)
    t = _ticket(now=clock())
    assert t.add_progress("Looking at the VPN logs", by="carla", now=clock.advance(minutes=20)) is True
    assert t.add_progress("Certificate expired", by="carla", now=clock.advance(minutes=20)) is False
    assert t.first_response_at == T0 + timedelta(minutes=20)
    assert t.first_response_seconds == 1200
    t.resolve("Renewed the certificate", by="carla", now=clock.advance(hours=2))
    assert t.status == TicketStatus.RESOLVED
    assert t.resolution_seconds == 40 * 60 + 7200
    assert (t.first_response_breached, t.resolution_breached) == (False, False)
    assert [n.note for n in t.progress] == ["Looking at the VPN logs", "Certificate expired"]
    with pytest.raises(Conflict, match="already resolved"):
        t.resolve("again", by="carla", now=clock())
    with pytest.raises(Conflict, match="no longer be added"):
        t.add_progress("late note", by="carla", now=clock())


def test_resolve_records_each_breach_separately() -> None:
    t = _ticket()  # urgent: 1h / 8h
    t.add_progress("on it", by="carla", now=T0 + timedelta(hours=2))
    t.resolve("fixed", by="carla", now=T0 + timedelta(hours=7))
    assert (t.first_response_breached, t.resolution_breached) == (True, False)
    t2 = _ticket()
    t2.resolve("fixed in one go", by="carla", now=T0 + timedelta(hours=9))
    assert t2.first_response_at == t2.resolved_at  # the resolution is the first response
    assert (t2.first_response_breached, t2.resolution_breached) == (True, True)


def test_sla_state_of_open_tickets_moves_on_track_at_risk_breached() -> None:
    t = _ticket()  # urgent: first response due after 60 minutes, at risk from 45
    view = sla_view(t, T0 + timedelta(minutes=10), 0.75)
    assert (view.state, view.first_response, view.resolution) == (
        SlaState.ON_TRACK,
        SlaState.ON_TRACK,
        SlaState.ON_TRACK,
    )
    assert sla_view(t, T0 + timedelta(minutes=45), 0.75).state == SlaState.AT_RISK
    late = sla_view(t, T0 + timedelta(minutes=61), 0.75)
    assert (late.state, late.first_response_breached) == (SlaState.BREACHED, True)
    t.add_progress("on it", by="carla", now=T0 + timedelta(minutes=30))
    answered = sla_view(t, T0 + timedelta(minutes=61), 0.75)
    assert (answered.state, answered.first_response) == (SlaState.ON_TRACK, SlaState.MET)
    assert sla_view(t, T0 + timedelta(hours=7), 0.75).state == SlaState.AT_RISK
    assert sla_view(t, T0 + timedelta(hours=8, seconds=1), 0.75).state == SlaState.BREACHED


def test_a_late_first_response_keeps_an_open_ticket_breached() -> None:
    t = _ticket()
    t.add_progress("sorry for the wait", by="carla", now=T0 + timedelta(hours=3))
    view = sla_view(t, T0 + timedelta(hours=3), 0.75)
    assert (view.state, view.first_response, view.resolution) == (
        SlaState.BREACHED,
        SlaState.BREACHED,
        SlaState.ON_TRACK,
    )


def test_resolved_ticket_has_no_live_sla_state() -> None:
    t = _ticket()
    t.resolve("done", by="carla", now=T0 + timedelta(minutes=5))
    view = sla_view(t, T0 + timedelta(days=30), 0.75)
    assert view.state is None
    assert (view.first_response, view.resolution) == (SlaState.MET, SlaState.MET)


def test_target_state_at_the_exact_due_time_is_not_breached() -> None:
    due = T0 + timedelta(hours=1)
    assert (
        target_state(started_at=T0, due_at=due, reached_at=due, now=due, at_risk_fraction=0.75)
        == SlaState.MET
    )
    assert (
        target_state(started_at=T0, due_at=due, reached_at=None, now=due, at_risk_fraction=0.75)
        == SlaState.AT_RISK
    )


# --- CSAT ----------------------------------------------------------------------------------------


def test_rating_only_after_resolution_and_only_once() -> None:
    t = _ticket()
    with pytest.raises(Conflict, match="only after it is resolved"):
        t.rate(5, by="rita", now=T0)
    t.resolve("done", by="carla", now=T0 + timedelta(minutes=5))
    t.rate(4, by="rita", now=T0 + timedelta(hours=1))
    assert (t.csat, t.rated_by) == (4, "rita")
    with pytest.raises(Conflict, match="already rated"):
        t.rate(5, by="rita", now=T0)


@pytest.mark.parametrize("bad", [0, 6, -1, True])
def test_csat_must_be_one_to_five(bad: int) -> None:
    with pytest.raises(RuleViolation, match="csat must be a whole number from 1 to 5") as err:
        validate_csat(bad)
    assert err.value.details["field"] == "csat"


def test_csat_bounds_are_accepted() -> None:
    assert validate_csat(1) == 1
    assert validate_csat(5) == 5


# --- access --------------------------------------------------------------------------------------


def test_csms_see_their_own_book_reps_and_admins_see_all() -> None:
    assert sees_all({"service_rep"})
    assert sees_all({"admin"})
    assert not sees_all({"customer_success_manager"})
    csm = {"customer_success_manager"}
    assert can_see_account(csm, "carla", "carla")
    assert not can_see_account(csm, "carla", "zoe")
    assert not can_see_account(csm, "carla", None)
    assert can_see_account({"service_rep"}, "rita", "zoe")
    assert can_see_ticket(csm, "carla", assignee="carla", account_csm="zoe")
    assert can_see_ticket(csm, "carla", assignee="rita", account_csm="carla")
    assert not can_see_ticket(csm, "carla", assignee="rita", account_csm="zoe")
