"""Accounts over their whole life, without I/O: contract terms, tiers, account managers and
renewals, as use cases run against the in-memory repository (``FakeUnitOfWork``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import ContractTerm, DealWonV1, DealWonV2, Product, add_months
from crm_contracts.events.service_desk import ChurnReason, RenewalOutcome, RenewalRecordedV1
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from pydantic import ValidationError
from service_desk.domain.accounts import Account, AccountStatus, AssignmentRole, account_from_deal
from service_desk.domain.renewals import RenewalDecision
from service_desk.domain.roster import CsmEntry
from service_desk.domain.success_config import SuccessConfig, TierConfig
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import success as lifecycle

Fake = FakeUnitOfWork[FakeSuccessUnit]
T0 = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
ADMIN = Actor.of("u-admin", ["admin"], username="ada")
CARLA = Actor.of("u-carla", ["customer_success_manager"], username="carla")
DORA = Actor.of("u-dora", ["customer_success_manager"], username="dora")


def deal(amount: float = 54000.0, term: ContractTerm | None = None, v2: bool = True) -> DealWonV1:
    values = {
        "deal_id": "deal-1",
        "account_name": "Acme GmbH",
        "contacts": [Contact(name="Ada", email="ada@acme.example")],
        "products": [Product(sku="CRM", name="CRM", quantity=1, unit_price=amount)],
        "value": Money(amount=amount),
        "commitments": [],
        "sales_owner": "u-sam",
        "won_at": T0,
    }
    return DealWonV2(**values, term=term) if v2 else DealWonV1(**values)


def account(amount: float = 54000.0, csm: str | None = "u-carla", **kw: object) -> Account:
    return account_from_deal(deal(amount, **kw), account_id="acc-1", csm=csm, checklist=["Kickoff"], now=T0)  # type: ignore[arg-type]


def context(
    clock: ManualClock, *accounts: Account
) -> tuple[FakeUnitOfWork[FakeSuccessUnit], FakeSuccessUnit]:
    unit = FakeSuccessUnit()
    unit.settings.csms = [CsmEntry(user_id="u-carla"), CsmEntry(user_id="u-dora")]
    for a in accounts:
        unit.accounts.items[a.account_id] = a
    return FakeUnitOfWork(unit, clock=clock), unit


# --- contract terms and tiers -------------------------------------------------------------------


def test_a_v2_deal_s_term_becomes_the_account_s_term_and_its_value_picks_the_tier() -> None:
    term = ContractTerm(
        start=T0, months=24, renewal_date=add_months(T0, 24), value=Money(amount=300000.0, currency="EUR")
    )
    a = account(300000.0, term=term)
    assert a.term is not None
    assert a.term.source == "deal"
    assert (a.term.months, a.term.renewal_date, a.term.amount) == (
        24,
        datetime(2028, 1, 31, 9, tzinfo=UTC),
        300000,
    )
    assert a.tier == "strategic"
    assert a.needs_account_manager(SuccessConfig())  # strategic accounts get a named account manager


def test_a_v1_deal_gets_the_configured_default_term_from_the_day_it_was_won() -> None:
    a = account(60000.0, v2=False)
    assert a.term is not None
    assert (a.term.source, a.term.months, a.term.start) == ("default", 12, T0)
    assert a.term.renewal_date == datetime(2027, 1, 31, 9, tzinfo=UTC)
    assert a.tier == "growth"
    assert not a.needs_account_manager(SuccessConfig())


def test_calendar_months_end_on_the_month_s_last_day() -> None:
    assert add_months(T0, 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert add_months(datetime(2027, 12, 31, tzinfo=UTC), 2) == datetime(2028, 2, 29, tzinfo=UTC)


def test_the_term_contract_refuses_a_renewal_before_its_start() -> None:
    with pytest.raises(ValidationError, match="renewal_date must be after start"):
        ContractTerm(start=T0, months=12, renewal_date=T0, value=Money(amount=1.0))


def test_tier_config_needs_a_floor_tier_and_unique_names() -> None:
    with pytest.raises(ValidationError, match="min_value 0"):
        SuccessConfig(tiers=[TierConfig(name="gold", min_value=Decimal(10), checkin_every_days=30)])
    with pytest.raises(ValidationError, match="unique"):
        SuccessConfig(tiers=[TierConfig(name="a", checkin_every_days=30)] * 2)
    with pytest.raises(ValidationError, match="lower-case"):
        TierConfig(name="Gold Tier", checkin_every_days=30)


async def test_naming_an_account_manager_is_recorded_and_shows_them_the_account() -> None:
    clock = ManualClock(T0)
    ctx, unit = context(clock, account(300000.0, csm="u-carla"))
    assert (await lifecycle.renewals_due(ctx, None, 730, DORA)) == []
    clock.advance(days=1)
    a = await lifecycle.assign_account_manager(ctx, "acc-1", "u-dora", "strategic account", CARLA)
    assert a.account_manager == "u-dora"
    assert a.owner == "u-dora"
    assert [(x.role, x.from_user, x.to_user, x.by, x.reason) for x in a.assignments] == [
        (AssignmentRole.ACCOUNT_MANAGER, None, "u-dora", "u-carla", "strategic account")
    ]
    assert not a.needs_account_manager(SuccessConfig())
    due = await lifecycle.renewals_due(ctx, None, 730, DORA)
    assert [d.account.account_id for d in due] == ["acc-1"]
    with pytest.raises(RuleViolation) as err:
        await lifecycle.assign_account_manager(ctx, "acc-1", "u-nobody", None, ADMIN)
    assert err.value.details["field"] == "user_id"
    assert unit.accounts.items["acc-1"].account_manager == "u-dora"


async def test_changing_the_tier_is_recorded_and_an_unknown_tier_names_the_field() -> None:
    ctx, _ = context(ManualClock(T0), account())
    a = await lifecycle.change_tier(ctx, "acc-1", "strategic", ADMIN)
    assert (a.tier, a.tier_changes[0].from_tier, a.tier_changes[0].by) == ("strategic", "growth", "u-admin")
    with pytest.raises(RuleViolation) as err:
        await lifecycle.change_tier(ctx, "acc-1", "platinum", ADMIN)
    assert err.value.details["field"] == "tier"
    with pytest.raises(Conflict):
        await lifecycle.change_tier(ctx, "acc-1", "strategic", ADMIN)
    with pytest.raises(NotFound):  # outside Dora's book
        await lifecycle.change_tier(ctx, "acc-1", "growth", DORA)


# --- renewals -----------------------------------------------------------------------------------


async def test_the_renewal_list_holds_the_window_overdue_first_and_only_the_csm_s_own() -> None:
    soon, later, overdue = account(), account(), account()
    for a, name, months in ((soon, "soon", 1), (later, "later", 9), (overdue, "overdue", -1)):
        a.account_id = name
        assert a.term is not None
        a.term = replace(a.term, renewal_date=add_months(T0, months), start=T0 - timedelta(days=400))
    later.csm = "u-dora"
    clock = ManualClock(T0)
    ctx, _ = context(clock, soon, later, overdue)
    due = await lifecycle.renewals_due(ctx, None, None, ADMIN)  # default 120 days
    assert [(d.account.account_id, d.overdue) for d in due] == [("overdue", True), ("soon", False)]
    assert [d.account.account_id for d in await lifecycle.renewals_due(ctx, None, 300, DORA)] == ["later"]
    assert await lifecycle.renewals_due(ctx, "u-carla", 300, DORA) == []


async def test_a_renewal_starts_a_new_term_at_the_old_renewal_date_and_is_emitted() -> None:
    clock = ManualClock(T0 + timedelta(days=330))
    ctx, unit = context(clock, account())
    record = await lifecycle.record_renewal_outcome(
        ctx,
        "acc-1",
        RenewalDecision(RenewalOutcome.RENEWED, new_amount=Decimal("60000.50"), new_months=12),
        CARLA,
    )
    a = unit.accounts.items["acc-1"]
    assert a.term is not None
    assert a.term.source == "renewal"
    assert (a.term.start, a.term.renewal_date, a.term.amount) == (
        datetime(2027, 1, 31, 9, tzinfo=UTC),
        datetime(2028, 1, 31, 9, tzinfo=UTC),
        Decimal("60000.50"),
    )
    (event,) = unit.emitted(RenewalRecordedV1)
    assert (event.outcome, event.previous_value.amount, event.account_manager) == (
        "renewed",
        54000.0,
        "u-carla",
    )
    assert event.new_term is not None
    assert event.new_term.value.amount == 60000.5
    assert record.due_date == datetime(2027, 1, 31, 9, tzinfo=UTC)


async def test_renewal_outcomes_are_checked_naming_the_field() -> None:
    ctx, unit = context(ManualClock(T0), account())
    cases = [
        (RenewalDecision(RenewalOutcome.DOWNGRADED, new_amount=Decimal(60000), new_months=12), "new_value"),
        (RenewalDecision(RenewalOutcome.RENEWED, new_amount=Decimal(1000), new_months=12), "new_value"),
        (RenewalDecision(RenewalOutcome.RENEWED, new_months=12), "new_value"),
        (RenewalDecision(RenewalOutcome.RENEWED, new_amount=Decimal(60000)), "new_term_months"),
        (RenewalDecision(RenewalOutcome.CHURNED), "churn_reason"),
        (RenewalDecision(RenewalOutcome.CHURNED, churn_reason=ChurnReason.PRICE, new_months=12), "new_value"),
        (
            RenewalDecision(
                RenewalOutcome.RENEWED,
                new_amount=Decimal(60000),
                new_months=12,
                churn_reason=ChurnReason.PRICE,
            ),
            "churn_reason",
        ),
    ]
    for decision, field in cases:
        with pytest.raises(RuleViolation) as err:
            await lifecycle.record_renewal_outcome(ctx, "acc-1", decision, CARLA)
        assert err.value.details["field"] == field, decision
    assert unit.events == []
    assert unit.renewals.items == []


async def test_a_churned_account_leaves_the_renewal_list_and_cannot_renew_again() -> None:
    clock = ManualClock(T0 + timedelta(days=300))
    ctx, unit = context(clock, account())
    await lifecycle.record_renewal_outcome(
        ctx, "acc-1", RenewalDecision(RenewalOutcome.CHURNED, churn_reason=ChurnReason.COMPETITOR), CARLA
    )
    assert unit.accounts.items["acc-1"].status == AccountStatus.CHURNED
    assert await lifecycle.renewals_due(ctx, None, 730, ADMIN) == []
    with pytest.raises(Conflict):
        await lifecycle.record_renewal_outcome(
            ctx, "acc-1", RenewalDecision(RenewalOutcome.CHURNED, churn_reason=ChurnReason.PRICE), CARLA
        )
    assert [r.churn_reason for r in await lifecycle.account_renewals(ctx, "acc-1", CARLA)] == ["competitor"]
    (event,) = unit.emitted(RenewalRecordedV1)
    assert event.churn_reason == "competitor"
    assert event.new_term is None
