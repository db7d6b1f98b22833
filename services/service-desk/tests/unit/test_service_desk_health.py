"""The health score, the churn early warning and its hit rate, check-ins and survey links,
without I/O: pure rules, and the handlers on the in-memory fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import DealWonV1, Product
from crm_contracts.events.service_desk import (
    CheckInLoggedV1,
    ChurnReason,
    ChurnRiskChangedV1,
    HealthBand,
    HealthScoredV1,
    RenewalOutcome,
    Sentiment,
    SurveyAnsweredV1,
    SurveyKind,
)
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.errors import Conflict, RuleViolation
from crm_platform.testing import eventually
from crm_platform.uow import FakeUnitOfWork
from service_desk.domain import health, surveys
from service_desk.domain.accounts import Account, account_from_deal
from service_desk.domain.checkins import checkin_due_at, checkins_due, per_csm
from service_desk.domain.config import Priority
from service_desk.domain.renewals import RenewalDecision, renewal_list
from service_desk.domain.roster import CsmEntry
from service_desk.domain.success_config import SuccessConfig
from service_desk.domain.tickets import Ticket, TicketStatus
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import success as lifecycle

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ADMIN = Actor.of("u-admin", ["admin"], username="ada")
CARLA = Actor.of("u-carla", ["customer_success_manager"], username="carla")
SECRET = b"test-secret"


def account(account_id: str = "acc-1", csm: str = "u-carla", won_at: datetime = T0) -> Account:
    deal = DealWonV1(
        deal_id=f"deal-{account_id}",
        account_name="Acme GmbH",
        contacts=[Contact(name="Ada", email="ada@acme.example")],
        products=[Product(sku="CRM", name="CRM", quantity=1, unit_price=60000.0)],
        value=Money(amount=60000.0),
        commitments=[],
        sales_owner="u-sam",
        won_at=won_at,
    )
    return account_from_deal(deal, account_id=account_id, csm=csm, checklist=["Kickoff"], now=won_at)


def setup(clock: ManualClock, *accounts: Account) -> tuple[FakeUnitOfWork[FakeSuccessUnit], FakeSuccessUnit]:
    unit = FakeSuccessUnit()
    unit.settings.csms = [CsmEntry(user_id="u-carla"), CsmEntry(user_id="u-dora")]
    for a in accounts:
        unit.accounts.items[a.account_id] = a
    return FakeUnitOfWork(unit, clock=clock), unit


def facts(**kw: object) -> health.HealthFacts:
    values: dict[str, object] = {"onboarding_completed": False, "onboarding_started_at": T0}
    values.update(kw)
    return health.HealthFacts(**values)  # type: ignore[arg-type]


RULES = health.RuleSet(version=1, rules=health.HealthRules())


# --- the score ----------------------------------------------------------------------------------


def test_a_score_is_the_base_plus_every_component_with_its_reason() -> None:
    result = health.score(
        facts(
            onboarding_completed=True,
            tickets_in_window=5,
            sla_breaches_in_window=1,
            csat_scores=[5, 4],
            latest_nps=(10, T0),
            checkin_due_at=T0 + timedelta(days=3),
            last_sentiment=Sentiment.NEGATIVE,
            open_flags=3,
            usage_ratio=0.2,
        ),
        RULES,
        T0,
    )
    assert [(r.component, r.points) for r in result.reasons] == [
        ("onboarding", 10),
        ("tickets", -4),
        ("sla", -5),
        ("csat", 7.5),
        ("nps", 10),
        ("checkins", 5),
        ("sentiment", -10),
        ("promises", -20),
        ("usage", -15),
    ]
    assert result.score == 60 + 10 - 4 - 5 + 7.5 + 10 + 5 - 10 - 20 - 15
    assert result.band == HealthBand.AT_RISK
    assert result.rules_version == 1


def test_the_score_is_clamped_and_banded_by_the_rules() -> None:
    assert (
        health.score(facts(onboarding_completed=True, usage_ratio=0.9), RULES, T0).band == HealthBand.HEALTHY
    )
    assert health.score(facts(), RULES, T0).band == HealthBand.WATCH
    low = health.score(facts(sla_breaches_in_window=9, open_flags=9, latest_nps=(0, T0)), RULES, T0)
    assert low.score == 5.0
    floor = health.RuleSet(version=2, rules=health.HealthRules(base=0))
    assert health.score(facts(open_flags=5), floor, T0).score == 0


def test_stale_nps_and_late_onboarding() -> None:
    old = health.score(facts(latest_nps=(2, T0 - timedelta(days=200))), RULES, T0)
    assert [r.component for r in old.reasons] == []
    late = health.score(facts(), RULES, T0 + timedelta(days=50))
    assert [(r.component, r.detail) for r in late.reasons] == [
        ("onboarding", "still onboarding after 50 days")
    ]


def test_rules_refuse_inverted_bands() -> None:
    with pytest.raises(ValueError, match="at_risk_below"):
        health.HealthRules(healthy_from=40, at_risk_below=50)


# --- the churn early warning --------------------------------------------------------------------


def test_each_warning_signal() -> None:
    rules = health.HealthRules()
    history = [(T0 - timedelta(days=10), 80.0), (T0 - timedelta(days=90), 95.0)]
    got = health.churn_signals(
        60.0,
        history,
        facts(latest_nps=(3, T0), sla_breaches_in_window=2, renewal_overdue=True),
        rules,
        T0,
    )
    assert [w.code for w in got] == [
        health.FALLING_TREND,
        health.DETRACTOR_NPS,
        health.REPEATED_SLA_BREACHES,
        health.OVERDUE_RENEWAL,
    ]
    assert got[0].detail == "health fell from 80 to 60"
    assert health.churn_signals(70.0, history, facts(sla_breaches_in_window=1), rules, T0) == []


def test_a_renewal_due_within_the_window_on_a_risky_account_is_a_warning_with_its_reasons() -> None:
    rules = health.HealthRules()  # renewal_at_risk_days 60, at_risk_below 45
    soon, later = T0 + timedelta(days=30), T0 + timedelta(days=61)

    def signals(score: float, **kw: object) -> list[tuple[str, str]]:
        return [(w.code, w.detail) for w in health.churn_signals(score, [], facts(**kw), rules, T0)]

    assert signals(70.0, renewal_due_at=soon, open_flags=1) == [
        (health.RENEWAL_AT_RISK, "renewal due in 30 days with open_flags")
    ]
    assert signals(40.0, renewal_due_at=soon, latest_nps=(4, T0))[-1] == (
        health.RENEWAL_AT_RISK,
        "renewal due in 30 days with low_health, detractor_nps",
    )
    assert signals(70.0, renewal_due_at=soon) == [], "a healthy account's renewal is no risk"
    assert signals(40.0, renewal_due_at=later, open_flags=2) == [], "not due within 60 days yet"
    assert signals(40.0, renewal_due_at=T0 - timedelta(days=1), renewal_overdue=True) == [
        (health.OVERDUE_RENEWAL, "renewal date passed without an outcome")
    ], "an overdue renewal is its own signal"
    off = health.HealthRules(renewal_at_risk_days=0)
    assert health.churn_signals(40.0, [], facts(renewal_due_at=soon, open_flags=1), off, T0) == []
    with pytest.raises(ValueError, match="renewal_at_risk_days"):
        health.HealthRules(renewal_at_risk_days=400)


def test_the_renewal_list_marks_a_soon_due_renewal_of_a_risky_account_with_why() -> None:
    def due_in(account_id: str, days: int, score: float, signals: list[str]) -> Account:
        a = account(account_id, won_at=T0 + timedelta(days=days) - timedelta(days=365))
        a.health = health.HealthState(
            score=score,
            band=HealthBand.AT_RISK if score < 45 else HealthBand.HEALTHY,
            rules_version=1,
            reasons=[],
            scored_at=T0,
            at_risk=bool(signals),
            signals=signals,
        )
        return a

    low = due_in("low", 40, 30.0, [])
    falling = due_in("falling", 50, 70.0, [health.FALLING_TREND, health.RENEWAL_AT_RISK])
    fine = due_in("fine", 20, 80.0, [])
    far = due_in("far", 100, 20.0, [])
    listed = renewal_list([far, fine, low, falling], now=T0, window_days=120, rules=health.HealthRules())
    assert [(d.account.account_id, d.at_risk, d.risks) for d in listed] == [
        ("fine", False, ()),
        ("low", True, ("low_health",)),
        ("falling", True, ("falling_trend",)),
        ("far", False, ()),  # listed (120-day window) but not due within 60 days yet
    ]
    assert all(not d.at_risk for d in renewal_list([low], now=T0, window_days=120))  # no rules: unmarked


def test_hit_rate_counts_warnings_before_each_outcome() -> None:
    due = T0 + timedelta(days=100)
    outcomes = [
        health.Outcome("churned-warned", True, due, due),
        health.Outcome("churned-silent", True, due, due),
        health.Outcome("renewed-warned", False, due, due),
        health.Outcome("renewed-quiet", False, due, due),
        health.Outcome("churned-warned-late", True, due, due),
    ]
    raised = [
        ("churned-warned", T0),
        ("renewed-warned", T0),
        ("churned-warned-late", due + timedelta(days=1)),  # after the outcome: not a prediction
        ("churned-silent", due - timedelta(days=400)),  # long before the lookback
    ]
    rate = health.hit_rate(outcomes, raised, lookback_days=180)
    assert (rate.true_positives, rate.false_positives, rate.false_negatives, rate.true_negatives) == (
        1,
        1,
        2,
        1,
    )
    assert rate.precision == 0.5
    assert rate.recall == 0.3333
    assert health.hit_rate([], [], lookback_days=180).precision is None


# --- check-ins ----------------------------------------------------------------------------------


async def test_a_logged_check_in_moves_the_due_date_and_is_emitted() -> None:
    clock = ManualClock(T0 + timedelta(days=100))
    uow, unit = setup(clock, account())
    config = SuccessConfig()
    assert checkin_due_at(unit.accounts.items["acc-1"], config.tier("growth")) == T0 + timedelta(days=90)
    due = await lifecycle.checkins_due(uow, None, 14, CARLA)
    assert [(d.account.account_id, d.overdue, d.days_overdue) for d in due] == [("acc-1", True, 10)]
    assert per_csm(due) == {"u-carla": {"due": 0, "overdue": 1}}
    entry = lifecycle.CheckInEntry(
        held_at=clock.now - timedelta(days=1),
        attendees=["Ada", " "],
        sentiment=Sentiment.POSITIVE,
        notes="ok",
    )
    checkin = await lifecycle.log_checkin(uow, "acc-1", entry, CARLA)
    assert checkin.attendees == ["Ada"]
    assert checkin.due_at == T0 + timedelta(days=90)
    assert await lifecycle.checkins_due(uow, None, 14, CARLA) == []
    (event,) = unit.emitted(CheckInLoggedV1)
    assert (event.sentiment, event.attendees, event.csm) == ("positive", 1, "u-carla")
    assert unit.accounts.items["acc-1"].health is not None  # scored with the check-in


async def test_check_in_input_is_checked_naming_the_field() -> None:
    clock = ManualClock(T0)
    uow, unit = setup(clock, account())
    future = lifecycle.CheckInEntry(
        held_at=T0 + timedelta(days=1), attendees=["A"], sentiment=Sentiment.NEUTRAL
    )
    nobody = lifecycle.CheckInEntry(held_at=T0, attendees=[" "], sentiment=Sentiment.NEUTRAL)
    for entry, field in ((future, "held_at"), (nobody, "attendees")):
        with pytest.raises(RuleViolation) as err:
            await lifecycle.log_checkin(uow, "acc-1", entry, CARLA)
        assert err.value.details["field"] == field
    assert unit.events == []


def test_check_ins_due_follow_each_tier_s_cadence() -> None:
    strategic, standard = account("s"), account("t", csm="u-dora")
    strategic.tier, standard.tier = "strategic", "standard"
    due = checkins_due([strategic, standard], SuccessConfig(), now=T0 + timedelta(days=40), horizon_days=7)
    assert [(d.account.account_id, d.overdue) for d in due] == [("s", True)]


# --- health through the handlers ----------------------------------------------------------------


def ticket(
    n: int, breached: bool, at: datetime, csat: int | None = None, account_id: str = "acc-1"
) -> Ticket:
    return Ticket(
        ticket_id=f"t-{n}",
        account_id=account_id,
        account_name="Acme",
        subject="s",
        request="r",
        priority=Priority.NORMAL,
        status=TicketStatus.RESOLVED,
        opened_by="u-rep",
        assignee="u-rep",
        opened_at=at,
        first_response_due_at=at,
        resolution_due_at=at,
        resolved_at=at,
        first_response_breached=False,
        resolution_breached=breached,
        csat=csat,
    )


async def test_repeated_breaches_raise_the_warning_once_and_a_renewal_clears_it() -> None:
    clock = ManualClock(T0 + timedelta(days=30))
    uow, unit = setup(clock, account())
    unit.tickets.items = [ticket(1, True, T0 + timedelta(days=20)), ticket(2, True, T0 + timedelta(days=25))]
    await lifecycle.recompute_health(uow, ADMIN)
    await lifecycle.recompute_health(uow, ADMIN)  # nothing changed: no second record or alert
    (raised,) = unit.emitted(ChurnRiskChangedV1)
    assert raised.at_risk is True
    assert raised.signals == ["repeated_sla_breaches"]
    assert raised.account_manager == "u-carla"
    (scored,) = unit.emitted(HealthScoredV1)
    assert ("sla", -10.0) in [(r.component, r.points) for r in scored.reasons]
    view = await lifecycle.account_health(uow, "acc-1", CARLA)
    assert view.state is not None
    assert view.state.at_risk is True
    assert len(view.history) == 1
    warnings = await lifecycle.churn_warnings(uow, None, CARLA)
    assert [a.account_id for a in warnings] == ["acc-1"]

    clock.advance(days=100)  # the breaches leave the 90-day window
    await lifecycle.recompute_health(uow, ADMIN)
    cleared = unit.emitted(ChurnRiskChangedV1)[-1]
    assert cleared.at_risk is False
    assert await lifecycle.churn_warnings(uow, None, CARLA) == []


async def test_the_schedule_scores_again_as_time_passes_with_no_one_asking() -> None:
    """Time alone changes health (breaches leave the window): the scheduled recompute sees it."""
    clock = ManualClock(T0 + timedelta(days=30))
    uow, unit = setup(clock, account())
    unit.tickets.items = [ticket(1, True, T0 + timedelta(days=20)), ticket(2, True, T0 + timedelta(days=25))]

    def risk_changes() -> list[bool]:
        return [e.at_risk for e in unit.emitted(ChurnRiskChangedV1)]

    schedule = asyncio.create_task(lifecycle.keep_health_current(uow, 0.01))
    try:
        await eventually(_async(lambda: risk_changes() == [True]), timeout=5, what="the warning raised")
        clock.advance(days=100)  # nothing happens to the account; only time passes
        await eventually(
            _async(lambda: risk_changes() == [True, False]), timeout=5, what="the warning cleared"
        )
    finally:
        schedule.cancel()
    assert len(unit.emitted(HealthScoredV1)) == 2  # a score enters the history only when it changed


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def test_new_rules_make_a_new_version_used_by_the_next_score() -> None:
    clock = ManualClock(T0)
    uow, unit = setup(clock, account())
    first = await lifecycle.health_rules(uow)
    assert first.version == 1
    saved = await lifecycle.replace_health_rules(uow, health.HealthRules(base=80), ADMIN)
    assert saved.version == 2
    await lifecycle.recompute_health(uow, ADMIN)
    (scored,) = unit.emitted(HealthScoredV1)
    assert scored.rules_version == 2
    assert scored.score == 85  # the new base 80, plus 5 for check-ins on cadence
    assert [r.component for r in scored.reasons] == ["checkins"]


async def test_the_hit_rate_of_the_warning_against_recorded_renewals() -> None:
    clock = ManualClock(T0 + timedelta(days=300))
    a, b = account("a"), account("b")
    uow, unit = setup(clock, a, b)
    unit.tickets.items = [
        replace(ticket(n, True, clock.now), account_id="a") for n in (1, 2)
    ]  # repeated breaches for a: warned; b churns without a warning
    await lifecycle.recompute_health(uow, ADMIN)
    churn = RenewalDecision(RenewalOutcome.CHURNED, churn_reason=ChurnReason.PRICE)
    await lifecycle.record_renewal_outcome(uow, "a", churn, ADMIN)
    await lifecycle.record_renewal_outcome(uow, "b", churn, ADMIN)
    rate = await lifecycle.warning_hit_rate(uow, 180)
    assert (rate.true_positives, rate.false_negatives, rate.precision, rate.recall) == (1, 1, 1.0, 0.5)


async def test_the_hit_rate_on_a_small_history_matches_the_hand_count() -> None:
    """Five accounts over a year, every renewal due on day 365 (the default 12-month term),
    counted by hand with a 180-day lookback (a warning counts from day 185 to the outcome):

    | account | history | warned in the lookback | outcome | counts as |
    | --- | --- | --- | --- | --- |
    | warned-churned | two SLA breaches on days 300 and 310 | yes (day 320) | churned | true positive |
    | silent-churned | nothing | no | churned | false negative |
    | warned-renewed | two SLA breaches on days 300 and 310 | yes (day 320) | renewed | false positive |
    | quiet-renewed | nothing | no | renewed | true negative |
    | early-churned | breaches days 20, 25: warned day 30, cleared day 130 | no | churned | false negative |

    precision = 1 / (1 + 1) = 0.5, recall = 1 / (1 + 2) = 0.3333

    The renewal-at-risk signal is off here (``renewal_at_risk_days=0``): every account of this
    history is still onboarding with no check-in, so it would mark all five renewals 55 days
    before (``test_a_renewal_due_soon_on_a_risky_account_is_at_risk_weeks_before`` has its count).
    """
    names = ["warned-churned", "silent-churned", "warned-renewed", "quiet-renewed", "early-churned"]
    clock = ManualClock(T0)
    uow, unit = setup(clock, *(account(n) for n in names))
    await lifecycle.replace_health_rules(uow, health.HealthRules(renewal_at_risk_days=0), ADMIN)
    day = lambda d: T0 + timedelta(days=d)  # noqa: E731
    tickets = [
        ticket(1, True, day(300), account_id="warned-churned"),
        ticket(2, True, day(310), account_id="warned-churned"),
        ticket(3, True, day(300), account_id="warned-renewed"),
        ticket(4, True, day(310), account_id="warned-renewed"),
        ticket(5, True, day(20), account_id="early-churned"),
        ticket(6, True, day(25), account_id="early-churned"),
    ]
    for d in (30, 130, 320):
        clock.now = day(d)
        unit.tickets.items = [t for t in tickets if t.opened_at <= clock.now]  # as they happened
        await lifecycle.recompute_health(uow, ADMIN)
    raised = [(e.account_id, e.at_risk) for e in unit.emitted(ChurnRiskChangedV1)]
    assert raised == [
        ("early-churned", True),
        ("early-churned", False),
        ("warned-churned", True),
        ("warned-renewed", True),
    ]
    clock.now = day(365)
    churn = RenewalDecision(RenewalOutcome.CHURNED, churn_reason=ChurnReason.COMPETITOR)
    renew = RenewalDecision(RenewalOutcome.RENEWED, new_amount=Decimal(60000), new_months=12)
    for name in names:
        await lifecycle.record_renewal_outcome(uow, name, renew if "renewed" in name else churn, ADMIN)
    rate = await lifecycle.warning_hit_rate(uow, 180)
    assert (rate.true_positives, rate.false_positives, rate.false_negatives, rate.true_negatives) == (
        1,
        1,
        2,
        1,
    )
    assert (rate.evaluated, rate.precision, rate.recall) == (5, 0.5, 0.3333)
    assert sorted(rate.misses) == ["early-churned", "silent-churned"]


async def test_a_renewal_due_soon_on_a_risky_account_is_at_risk_weeks_before() -> None:
    """The account is still onboarding with no check-in (health 40: low): its renewal (day 365)
    is not at risk on day 300, 65 days before, and is on day 310, 55 days before; the renewal
    list and the churn warning say so, with the reason, weeks before the due date."""
    clock = ManualClock(T0 + timedelta(days=300))
    uow, unit = setup(clock, account())
    await lifecycle.recompute_health(uow, ADMIN)
    assert unit.emitted(ChurnRiskChangedV1) == []
    (due,) = await lifecycle.renewals_due(uow, None, None, CARLA)
    assert (due.days_left, due.at_risk) == (65, False)

    clock.now = T0 + timedelta(days=310)
    await lifecycle.recompute_health(uow, ADMIN)
    (raised,) = unit.emitted(ChurnRiskChangedV1)
    assert (raised.at_risk, raised.signals) == (True, [health.RENEWAL_AT_RISK])
    (warned,) = await lifecycle.churn_warnings(uow, None, CARLA)
    assert warned.health is not None
    assert warned.health.signal_details == ["renewal due in 55 days with low_health"]
    (due,) = await lifecycle.renewals_due(uow, None, None, CARLA)
    assert (due.days_left, due.at_risk, due.risks) == (55, True, ("low_health",))


# --- surveys ------------------------------------------------------------------------------------


def survey(kind: SurveyKind = SurveyKind.NPS, now: datetime = T0) -> surveys.Survey:
    return surveys.new_survey(
        survey_id="sv-1",
        account_id="acc-1",
        account_name="Acme",
        kind=kind,
        ticket_id=None,
        by="u-carla",
        now=now,
        valid_days=14,
    )


def test_a_link_is_signed_and_refused_when_forged_or_expired() -> None:
    s = survey()
    token = surveys.sign(SECRET, s)
    assert surveys.verify(SECRET, token, now=T0) == "sv-1"
    sid, expires, mac = token.split(".")
    forged = [
        f"sv-2.{expires}.{mac}",
        f"{sid}.{int(expires) + 86400}.{mac}",
        surveys.sign(b"another-secret", s),
        "garbage",
        f"{sid}.{expires}",
        "x" * 500,
        f"{sid}.-1.{mac}",
    ]
    for bad in forged:
        with pytest.raises(surveys.SurveyLinkInvalid):
            surveys.verify(SECRET, bad, now=T0)
    with pytest.raises(surveys.SurveyLinkExpired):
        surveys.verify(SECRET, token, now=T0 + timedelta(days=14))


def test_an_answer_is_once_within_the_scale() -> None:
    s = survey(SurveyKind.CSAT)
    with pytest.raises(RuleViolation) as err:
        s.answer(6, None, now=T0)
    assert err.value.details["field"] == "score"
    s.answer(4, "  quick fix ", now=T0)
    assert (s.score, s.comment) == (4, "quick fix")
    with pytest.raises(Conflict):
        s.answer(5, None, now=T0)


async def test_an_nps_answer_through_the_link_scores_health_and_a_detractor_raises_the_warning() -> None:
    clock = ManualClock(T0)
    uow, unit = setup(clock, account())
    sent = await lifecycle.send_nps(uow, "acc-1", SECRET, CARLA)
    clock.advance(days=1)
    answered = await lifecycle.answer_survey(uow, sent.token, 3, "too slow", SECRET)
    assert answered.score == 3
    (event,) = unit.emitted(SurveyAnsweredV1)
    assert (event.kind, event.score, event.has_comment) == ("nps", 3, True)
    (risk,) = unit.emitted(ChurnRiskChangedV1)
    assert risk.signals == ["detractor_nps"]
    with pytest.raises(Conflict):
        await lifecycle.answer_survey(uow, sent.token, 9, None, SECRET)
    with pytest.raises(Conflict):  # NPS is on a schedule: not again before it is due
        await lifecycle.send_nps(uow, "acc-1", SECRET, CARLA)
    sent_now = await lifecycle.send_due_nps(uow, SECRET, ADMIN)
    assert sent_now == []
    clock.advance(days=200)
    assert [s.survey.account_id for s in await lifecycle.send_due_nps(uow, SECRET, ADMIN)] == ["acc-1"]


async def test_csat_is_sent_for_a_resolved_ticket_once() -> None:
    clock = ManualClock(T0)
    uow, unit = setup(clock, account())
    unit.tickets.items = [ticket(1, False, T0)]
    sent = await lifecycle.send_csat(uow, "t-1", SECRET, CARLA)
    with pytest.raises(Conflict):
        await lifecycle.send_csat(uow, "t-1", SECRET, CARLA)
    await lifecycle.answer_survey(uow, sent.token, 5, None, SECRET)
    assert unit.tickets.items[0].csat == 5  # the customer's score, on the ticket
    assert Decimal(1) == 1
