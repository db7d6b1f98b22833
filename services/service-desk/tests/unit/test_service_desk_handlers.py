"""The account and ticket handlers against the in-memory fakes: no broker, no database, a manual clock.

What is stored, what is emitted, what is refused, in milliseconds; the integration suites
beside them (test_service_desk_api.py, test_service_desk_assignment.py) run the same paths on
the real broker and mongod. The customer-success handlers (renewals, check-ins, health,
surveys) are pinned in test_service_desk_lifecycle.py and test_service_desk_health.py, the
commitment reviews in test_service_desk_reviews.py.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import Commitment, DealWonV1, Product
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    HealthScoredV1,
    OnboardingCompletedV1,
    OnboardingStartedV1,
    OnboardingStepCompletedV1,
    SignalKind,
    TicketOpenedV1,
    TicketResolvedV1,
    UpsellSpottedV1,
)
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from service_desk.domain.accounts import CommitmentStatus, OnboardingStatus
from service_desk.domain.config import Priority, default_config
from service_desk.domain.roster import CsmEntry
from service_desk.domain.tickets import TicketStatus
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import accounts, tickets

T0 = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
MS = datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC)  # T0 at MongoDB's precision
ADMIN = Actor.of("u-admin", ["admin"])
REP = Actor.of("u-rita", ["service_rep"])
CARLA = Actor.of("u-carla", ["customer_success_manager"])
DORA = Actor.of("u-dora", ["customer_success_manager"])
Uow = FakeUnitOfWork[FakeSuccessUnit]


def make_uow(*csms: str, inactive: tuple[str, ...] = ()) -> Uow:
    unit = FakeSuccessUnit()
    unit.settings.csms = [CsmEntry(user_id=c) for c in csms] + [
        CsmEntry(user_id=c, active=False) for c in inactive
    ]
    ids = (f"id-{n}" for n in itertools.count(1))
    return FakeUnitOfWork(unit, clock=ManualClock(T0), new_id=lambda: next(ids))


def won(deal_id: str = "deal-1") -> DealWonV1:
    return DealWonV1(
        deal_id=deal_id,
        lead_id="lead-1",
        account_name="Acme GmbH",
        contacts=[Contact(name="Ada", email="ada@acme.example")],
        products=[Product(sku="CRM", name="CRM", quantity=10, unit_price=100.0)],
        value=Money(amount=1000.0, currency="EUR"),
        commitments=[Commitment(commitment_id="c-sso", description="SSO by go-live")],
        sales_owner="u-sam",
        won_at=T0,
    )


def advance(uow: Uow, **delta: float) -> None:
    assert isinstance(uow.clock, ManualClock)
    uow.clock.advance(**delta)


def correlation_of(uow: Uow, event_type: type) -> list[str | None]:
    return [e.correlation_id for e in uow.unit.events if isinstance(e.event, event_type)]


async def deliver(uow: Uow, deal: DealWonV1) -> str:
    """Deliver ``deal.won`` and return the account's id."""
    await accounts.on_deal_won(
        uow, deal, envelope_for(deal, source="sales", correlation_id=f"j-{deal.deal_id}")
    )
    account = await uow.unit.accounts.by_deal(deal.deal_id)
    assert account is not None
    return account.account_id


# --- the won deal -------------------------------------------------------------------------------


async def test_a_won_deal_opens_one_account_round_robin_and_announces_its_onboarding() -> None:
    uow = make_uow("u-ann", "u-ben", inactive=("u-cat",))
    first = await deliver(uow, won("deal-1"))
    second = await deliver(uow, won("deal-2"))
    third = await deliver(uow, won("deal-3"))
    stored = [uow.unit.accounts.items[a] for a in (first, second, third)]
    assert [a.csm for a in stored] == ["u-ann", "u-ben", "u-ann"]
    assert stored[0].onboarding.started_at == MS
    assert stored[0].journey_id == "j-deal-1"
    assert [i.title for i in stored[0].onboarding.checklist] == default_config().onboarding_checklist
    [started, *_] = uow.unit.emitted(OnboardingStartedV1)
    assert (started.account_id, started.deal_id, started.csm) == (first, "deal-1", "u-ann")


async def test_the_same_deal_again_under_a_new_event_id_changes_nothing() -> None:
    uow = make_uow("u-ann")
    await deliver(uow, won())
    await deliver(uow, won())
    assert len(uow.unit.accounts.items) == 1
    assert len(uow.unit.emitted(OnboardingStartedV1)) == 1


async def test_without_an_active_csm_the_account_is_unassigned() -> None:
    uow = make_uow(inactive=("u-cat",))
    account_id = await deliver(uow, won())
    assert uow.unit.accounts.items[account_id].csm is None
    assert uow.unit.emitted(OnboardingStartedV1)[0].csm == "unassigned"
    assert uow.unit.settings.turns == 0  # no turn taken without anyone to give it to


# --- roster and configuration -------------------------------------------------------------------


async def test_the_roster_is_validated_sorted_and_stamped() -> None:
    uow = make_uow()
    record = await accounts.replace_roster(uow, [CsmEntry(user_id="u-ben"), CsmEntry(user_id="u-ann")], ADMIN)
    assert [e.user_id for e in record.csms] == ["u-ann", "u-ben"]
    assert (record.updated_at, record.updated_by) == (MS, "u-admin")
    assert await accounts.roster(uow) == record
    with pytest.raises(RuleViolation):
        await accounts.replace_roster(uow, [CsmEntry(user_id="u-ann"), CsmEntry(user_id="u-ann")], ADMIN)


async def test_the_desk_configuration_is_replaced_and_stamped() -> None:
    uow = make_uow()
    assert (await accounts.desk_config(uow)).config == default_config()
    config = default_config().model_copy(update={"onboarding_checklist": ["Kickoff"]})
    await accounts.replace_desk_config(uow, config, ADMIN)
    record = await accounts.desk_config(uow)
    assert (record.config.onboarding_checklist, record.updated_by) == (["Kickoff"], "u-admin")
    account_id = await deliver(uow, won())
    assert [i.key for i in uow.unit.accounts.items[account_id].onboarding.checklist] == ["kickoff"]


# --- accounts -----------------------------------------------------------------------------------


async def test_a_csm_sees_only_their_own_accounts() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    assert (await accounts.get_account(uow, account_id, CARLA)).account_id == account_id
    assert (await accounts.get_account(uow, account_id, REP)).account_id == account_id
    with pytest.raises(NotFound):
        await accounts.get_account(uow, account_id, DORA)
    with pytest.raises(NotFound):
        await accounts.get_account(uow, "nope", ADMIN)


async def test_the_last_checklist_item_completes_onboarding_once_and_rescores_health() -> None:
    uow = make_uow("u-carla")
    await accounts.replace_desk_config(
        uow, default_config().model_copy(update={"onboarding_checklist": ["Kickoff", "Training"]}), ADMIN
    )
    account_id = await deliver(uow, won())
    advance(uow, hours=2)
    account = await accounts.complete_checklist_item(uow, account_id, "kickoff", CARLA)
    assert account.onboarding.status == OnboardingStatus.IN_PROGRESS
    assert uow.unit.emitted(OnboardingCompletedV1) == []
    advance(uow, hours=1)
    account = await accounts.complete_checklist_item(uow, account_id, "training", CARLA)
    assert account.onboarding.status == OnboardingStatus.COMPLETED
    [done] = uow.unit.emitted(OnboardingCompletedV1)
    assert (done.duration_seconds, done.csm) == (3 * 3600, "u-carla")
    assert correlation_of(uow, OnboardingCompletedV1) == ["j-deal-1"]
    assert uow.unit.emitted(HealthScoredV1), "completing onboarding rescores the account"
    with pytest.raises(Conflict, match="already completed"):
        await accounts.complete_checklist_item(uow, account_id, "training", CARLA)
    with pytest.raises(NotFound):
        await accounts.complete_checklist_item(uow, account_id, "golf", CARLA)
    # Each ticked item is a human step analytics can see (deal-won's business latency ends at the first).
    steps = uow.unit.emitted(OnboardingStepCompletedV1)
    assert [(e.item, e.completed_by, e.remaining) for e in steps] == [
        ("kickoff", CARLA.user_id, 1),
        ("training", CARLA.user_id, 0),
    ]
    assert steps[0].completed_at < steps[1].completed_at


async def test_an_account_goes_to_another_active_csm_only() -> None:
    uow = make_uow("u-carla", "u-dora", inactive=("u-eve",))
    account_id = await deliver(uow, won())
    account = await accounts.assign_csm(uow, account_id, "u-dora", ADMIN)
    assert account.csm == "u-dora"
    assert [(a.from_user, a.to_user, a.by) for a in account.assignments] == [("u-carla", "u-dora", "u-admin")]
    again = await accounts.assign_csm(uow, account_id, "u-dora", ADMIN)  # the same CSM: nothing recorded
    assert len(again.assignments) == 1
    with pytest.raises(RuleViolation, match="not an active CSM"):
        await accounts.assign_csm(uow, account_id, "u-eve", ADMIN)
    assert uow.unit.accounts.items[account_id].csm == "u-dora"


async def test_a_flagged_commitment_goes_to_sales_and_can_then_be_delivered() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    commitment = await accounts.flag_commitment(uow, account_id, "c-sso", " not on the roadmap ", CARLA)
    assert commitment.status == CommitmentStatus.FLAGGED
    [flag] = uow.unit.emitted(CommitmentFlaggedV1)
    assert (flag.commitment_id, flag.reason, flag.flagged_by, flag.flag_id) == (
        "c-sso",
        "not on the roadmap",
        "u-carla",
        commitment.flag_id,
    )
    with pytest.raises(Conflict, match="already flagged"):
        await accounts.flag_commitment(uow, account_id, "c-sso", "again", CARLA)
    delivered = await accounts.deliver_commitment(uow, account_id, "c-sso", CARLA)
    assert delivered.status == CommitmentStatus.DELIVERED
    stored = uow.unit.accounts.items[account_id].commitment("c-sso")
    assert (stored.status, stored.delivered_by) == (CommitmentStatus.DELIVERED, "u-carla")
    with pytest.raises(Conflict, match="already delivered"):
        await accounts.deliver_commitment(uow, account_id, "c-sso", CARLA)
    with pytest.raises(NotFound):
        await accounts.flag_commitment(uow, account_id, "c-sso", "x", DORA)  # not Dora's account


async def test_a_spotted_signal_is_kept_on_the_account_and_handed_to_sales() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    signal = await accounts.spot_signal(
        uow, account_id, SignalKind.UPSELL, "20 more seats", Decimal("1800.00"), REP
    )
    [spotted] = uow.unit.emitted(UpsellSpottedV1)
    assert (spotted.signal_id, spotted.sales_owner, spotted.estimated_value, spotted.spotted_by) == (
        signal.signal_id,
        "u-sam",
        1800.0,
        "u-rita",
    )
    assert uow.unit.accounts.items[account_id].signals == [signal]
    with pytest.raises(RuleViolation, match="description"):
        await accounts.spot_signal(uow, account_id, SignalKind.RENEWAL, "  ", None, REP)
    assert len(uow.unit.emitted(UpsellSpottedV1)) == 1  # the refused one emitted nothing


# --- tickets ------------------------------------------------------------------------------------


def new_ticket(account_id: str, *, assign_to_me: bool = False) -> tickets.NewTicket:
    return tickets.NewTicket(
        account_id=account_id,
        subject="VPN down",
        request="Nobody can connect",
        priority=Priority.HIGH,
        assign_to_me=assign_to_me,
    )


async def test_a_ticket_goes_to_the_account_s_csm_with_its_sla_due_times() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    ticket = await tickets.open_new_ticket(uow, new_ticket(account_id), REP)
    target = default_config().target(Priority.HIGH)
    assert (ticket.assignee, ticket.opened_by, ticket.opened_at) == ("u-carla", "u-rita", MS)
    assert ticket.first_response_due_at == MS + target.first_response
    [opened] = uow.unit.emitted(TicketOpenedV1)
    assert (opened.ticket_id, opened.priority, opened.assignee) == (ticket.ticket_id, "high", "u-carla")
    mine = await tickets.open_new_ticket(uow, new_ticket(account_id, assign_to_me=True), REP)
    assert mine.assignee == "u-rita"


async def test_a_ticket_for_an_account_out_of_sight_is_refused() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    with pytest.raises(RuleViolation, match="unknown account"):
        await tickets.open_new_ticket(uow, new_ticket(account_id), DORA)
    with pytest.raises(RuleViolation, match="unknown account"):
        await tickets.open_new_ticket(uow, new_ticket("nope"), ADMIN)
    assert uow.unit.tickets.items == []


async def test_progress_then_resolution_records_the_sla_and_rescores_health() -> None:
    uow = make_uow("u-carla")
    account_id = await deliver(uow, won())
    ticket = await tickets.open_new_ticket(uow, new_ticket(account_id), REP)
    advance(uow, minutes=30)
    noted = await tickets.add_progress(uow, ticket.ticket_id, "Looking at it", CARLA)
    assert noted.first_response_at == MS + timedelta(minutes=30)
    advance(uow, days=3)
    resolved = await tickets.resolve_ticket(uow, ticket.ticket_id, "Certificate renewed", CARLA)
    assert resolved.status == TicketStatus.RESOLVED
    [event] = uow.unit.emitted(TicketResolvedV1)
    assert (event.first_response_breached, event.resolution_breached) == (False, True)
    assert event.resolution_seconds == 30 * 60 + 3 * 86400
    assert correlation_of(uow, TicketResolvedV1) == ["j-deal-1"]
    assert uow.unit.emitted(HealthScoredV1), "resolving a ticket rescores the account"
    stored = await tickets.get_ticket(uow, ticket.ticket_id, CARLA)
    assert (stored.status, stored.result) == (TicketStatus.RESOLVED, "Certificate renewed")
    with pytest.raises(Conflict, match="already resolved"):
        await tickets.resolve_ticket(uow, ticket.ticket_id, "again", CARLA)
    with pytest.raises(NotFound):
        await tickets.get_ticket(uow, ticket.ticket_id, DORA)
