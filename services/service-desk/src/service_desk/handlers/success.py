"""Customer success handlers over an account's whole life: contract terms, tiers, account
managers, renewals, check-ins, health and surveys.

The service layer in the shape of docs/SERVICE-GUIDE.md: one function per command, each
``uow.run(work)`` where ``work`` loads through the unit's repositories, lets ONE domain
function decide, saves and emits (one transaction with the outbox). Unit tests run them on
``fakes.py``; the app on ``crm_platform.uow.MongoUnitOfWork`` over ``store.MongoSuccessUnit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from crm_contracts.events.service_desk import (
    Sentiment,
    SurveyKind,
)
from crm_platform.actor import Actor
from crm_platform.clock import to_millis
from crm_platform.errors import Conflict, NotFound, RuleViolation
from pymongo.errors import PyMongoError

from service_desk.domain import account_health as assessment
from service_desk.domain import checkins, health, surveys
from service_desk.domain.access import book_of
from service_desk.domain.accounts import (
    Account,
    AccountStatus,
    AssignmentRole,
    Usage,
)
from service_desk.domain.checkins import CheckIn, CheckInDue
from service_desk.domain.health import (
    HealthRecord,
    HealthRules,
    HealthState,
    RuleSet,
)
from service_desk.domain.renewals import (
    RenewalDecision,
    RenewalDue,
    RenewalRecord,
    record_renewal,
    renewal_list,
)
from service_desk.domain.roster import active_csms
from service_desk.domain.success_config import SuccessConfig, SuccessConfigRecord
from service_desk.domain.surveys import Survey
from service_desk.domain.tickets import TicketStatus
from service_desk.handlers.loading import load_account as _load
from service_desk.handlers.loading import load_ticket
from service_desk.repository import SuccessUnit, SuccessUoW

log = logging.getLogger("crm.service_desk.health")

Uow = SuccessUoW


def now_millis(uow: Uow) -> datetime:
    """MongoDB keeps milliseconds: what a write answers is what a read returns."""
    return to_millis(uow.clock())


async def load(unit: SuccessUnit, actor: Actor, account_id: str) -> Account:
    return await _load(unit, actor, account_id)


# --- configuration ------------------------------------------------------------------------------


async def success_config(uow: Uow) -> SuccessConfigRecord:
    async def work(unit: SuccessUnit) -> SuccessConfigRecord:
        return await unit.settings.config_record()

    return await uow.run(work)


async def replace_success_config(uow: Uow, config: SuccessConfig, actor: Actor) -> SuccessConfigRecord:
    record = SuccessConfigRecord(config, now_millis(uow), actor.user_id)

    async def work(unit: SuccessUnit) -> None:
        await unit.settings.save_config(record)

    await uow.run(work)
    return record


# --- tiers and account managers -----------------------------------------------------------------


async def change_tier(uow: Uow, account_id: str, tier_name: str, actor: Actor) -> Account:
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> Account:
        account = await load(unit, actor, account_id)
        config = await unit.settings.config()
        tier = config.tier(tier_name)
        if tier is None:
            raise RuleViolation(
                f"unknown tier {tier_name!r}; configured: {config.tier_names()}", field="tier"
            )
        account.change_tier(tier, by=actor.user_id, now=now)
        await unit.accounts.save(account)
        return account

    return await uow.run(work)


async def assign_account_manager(
    uow: Uow, account_id: str, manager: str | None, reason: str | None, actor: Actor
) -> Account:
    """Name (or, with ``None``, remove) the account manager; every change is recorded."""
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> Account:
        account = await load(unit, actor, account_id)
        active = active_csms(await unit.settings.roster())
        role = AssignmentRole.ACCOUNT_MANAGER
        if account.assign(role, manager, active=active, by=actor.user_id, now=now, reason=reason):
            await unit.accounts.save(account)
        return account

    return await uow.run(work)


# --- renewals -----------------------------------------------------------------------------------


async def renewals_due(
    uow: Uow, manager: str | None, window_days: int | None, actor: Actor
) -> list[RenewalDue]:
    """The renewal list: renewals due within the window (default: configured), overdue first, each
    at risk (with why) when due within the health rules' ``renewal_at_risk_days`` on a risky account."""
    allowed, member = book_of(actor, manager)
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> list[RenewalDue]:
        if not allowed:
            return []
        config = await unit.settings.config()
        window = window_days or config.renewal_window_days
        accounts = await unit.accounts.renewing(until=now + timedelta(days=window), member=member)
        rules = (await unit.health.rules()).rules
        return renewal_list(accounts, now=now, window_days=window, rules=rules)

    return await uow.run(work)


async def record_renewal_outcome(
    uow: Uow, account_id: str, decision: RenewalDecision, actor: Actor
) -> RenewalRecord:
    now, renewal_id = now_millis(uow), uow.new_id()

    async def work(unit: SuccessUnit) -> RenewalRecord:
        account = await load(unit, actor, account_id)
        record = record_renewal(account, decision, renewal_id=renewal_id, by=actor.user_id, now=now)
        await unit.accounts.save(account)
        await unit.renewals.add(record)
        unit.emit(record.recorded(), correlation_id=account.journey_id)
        if account.status == AccountStatus.ACTIVE:
            await refresh_health(unit, account, now, uow.new_id)
        return record

    return await uow.run(work)


async def account_renewals(uow: Uow, account_id: str, actor: Actor) -> list[RenewalRecord]:
    async def work(unit: SuccessUnit) -> list[RenewalRecord]:
        await load(unit, actor, account_id)
        return await unit.renewals.of_account(account_id)

    return await uow.run(work)


# --- check-ins ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckInEntry:
    held_at: datetime
    attendees: list[str]
    sentiment: Sentiment
    notes: str | None = None


async def log_checkin(uow: Uow, account_id: str, entry: CheckInEntry, actor: Actor) -> CheckIn:
    now, checkin_id = now_millis(uow), uow.new_id()

    async def work(unit: SuccessUnit) -> CheckIn:
        account = await load(unit, actor, account_id)
        config = await unit.settings.config()
        checkin = checkins.log_checkin(
            account,
            config.tier(account.tier),
            checkin_id=checkin_id,
            held_at=entry.held_at,
            attendees=entry.attendees,
            sentiment=entry.sentiment,
            notes=entry.notes,
            by=actor.user_id,
            now=now,
        )
        await unit.checkins.add(checkin)
        unit.emit(checkin.logged(account.tier), correlation_id=account.journey_id)
        await refresh_health(unit, account, now, uow.new_id)
        return checkin

    return await uow.run(work)


async def account_checkins(uow: Uow, account_id: str, actor: Actor) -> list[CheckIn]:
    async def work(unit: SuccessUnit) -> list[CheckIn]:
        await load(unit, actor, account_id)
        return await unit.checkins.of_account(account_id)

    return await uow.run(work)


async def checkins_due(uow: Uow, csm: str | None, horizon_days: int, actor: Actor) -> list[CheckInDue]:
    """Due (within the horizon) and overdue check-ins: a CSM's own; reps and admins anyone's."""
    allowed, member = book_of(actor, csm)
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> list[CheckInDue]:
        if not allowed:
            return []
        config = await unit.settings.config()
        accounts = await unit.accounts.active(member)
        return checkins.checkins_due(accounts, config, now=now, horizon_days=horizon_days)

    return await uow.run(work)


# --- health and the churn early warning ---------------------------------------------------------


async def refresh_health(
    unit: SuccessUnit, account: Account, now: datetime, new_id: Callable[[], str]
) -> None:
    """Score the account and update its churn warning, inside the caller's transaction.

    A score is added to the history (``account.health_scored``) only when it changed; the
    warning's raise, change and clear (``account.churn_risk_changed``) only when they happen."""
    ruleset = await unit.health.rules()
    config = await unit.settings.config()
    facts = assessment.facts_of(
        account,
        tier=config.tier(account.tier),
        tickets=await unit.tickets.of_account(account.account_id),
        latest_nps=await unit.surveys.latest_answer(account.account_id, SurveyKind.NPS),
        rules=ruleset.rules,
        now=now,
    )
    since = assessment.falling_since(ruleset.rules, now)
    history = await unit.health.history(account.account_id, since=since)
    record, risk = assessment.assess(account, facts, ruleset, history, record_id=new_id(), now=now)
    await unit.accounts.save(account)
    if record is not None:
        await unit.health.add(record)
        unit.emit(record.scored(), correlation_id=account.journey_id)
    if risk is not None:
        await unit.health.add_risk_change(risk)
        unit.emit(risk.changed(), correlation_id=account.journey_id)


async def rescore(uow: Uow, account_id: str) -> None:
    """Score one account again after a change elsewhere (a ticket, a commitment, onboarding)."""
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> None:
        account = await unit.accounts.get(account_id)
        if account is not None and account.status == AccountStatus.ACTIVE:
            await refresh_health(unit, account, now, uow.new_id)

    await uow.run(work)


async def recompute_health(uow: Uow, actor: Actor) -> int:
    """Score every active account of the user's book again (time moves: check-ins and renewals
    fall overdue, breaches leave the window); one transaction per account. Returns how many."""
    _, member = book_of(actor, None)
    return await _rescore_active(uow, member)


async def _rescore_active(uow: Uow, member: str | None) -> int:
    async def ids(unit: SuccessUnit) -> list[str]:
        return [a.account_id for a in await unit.accounts.active(member)]

    account_ids = await uow.run(ids)
    for account_id in account_ids:
        await rescore(uow, account_id)
    return len(account_ids)


async def keep_health_current(uow: Uow, every_seconds: float) -> None:
    """The scheduled recompute: every ``every_seconds``, score every active account again.

    Health depends on time as well as on events (a check-in or a renewal falls overdue
    with nothing happening), so without it a score and its churn warning would wait for
    the next change to the account. Replicas may overlap: a score enters the history only
    when it changed, and each account is scored in its own transaction.
    """
    while True:
        await asyncio.sleep(every_seconds)
        started = time.monotonic()
        try:
            count = await _rescore_active(uow, None)
        except (PyMongoError, TimeoutError) as exc:
            log.warning("scheduled health recompute postponed (%s: %s)", type(exc).__name__, exc)
            continue
        log.info("scheduled health recompute: %d accounts in %.1f s", count, time.monotonic() - started)


@dataclass(frozen=True)
class HealthView:
    state: HealthState | None
    history: list[HealthRecord]


async def account_health(uow: Uow, account_id: str, actor: Actor) -> HealthView:
    async def work(unit: SuccessUnit) -> HealthView:
        account = await load(unit, actor, account_id)
        return HealthView(account.health, await unit.health.history(account_id))

    return await uow.run(work)


async def health_rules(uow: Uow) -> RuleSet:
    async def work(unit: SuccessUnit) -> RuleSet:
        return await unit.health.rules()

    return await uow.run(work)


async def replace_health_rules(uow: Uow, rules: HealthRules, actor: Actor) -> RuleSet:
    """Save the rules as the next version; scores from now on name it."""
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> RuleSet:
        current = await unit.health.rules()
        ruleset = RuleSet(version=current.version + 1, rules=rules, created_at=now, created_by=actor.user_id)
        await unit.health.add_rules(ruleset)
        return ruleset

    return await uow.run(work)


async def churn_warnings(uow: Uow, manager: str | None, actor: Actor) -> list[Account]:
    """Accounts whose churn warning is raised, for their account manager (a CSM: their own)."""
    allowed, member = book_of(actor, manager)

    async def work(unit: SuccessUnit) -> list[Account]:
        if not allowed:
            return []
        at_risk = [a for a in await unit.accounts.active(member) if a.health and a.health.at_risk]
        return sorted(at_risk, key=lambda a: a.health.score if a.health else 0)

    return await uow.run(work)


async def warning_hit_rate(uow: Uow, lookback_days: int) -> health.HitRate:
    """Precision and recall of the churn warning against every recorded renewal outcome."""

    async def work(unit: SuccessUnit) -> health.HitRate:
        outcomes = [
            health.outcome_of(r.account_id, r.outcome, r.due_date, r.recorded_at)
            for r in await unit.renewals.all()
        ]
        return health.hit_rate(outcomes, await unit.health.raised(), lookback_days=lookback_days)

    return await uow.run(work)


async def record_usage(uow: Uow, account_id: str, usage: Usage, actor: Actor) -> Account:
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> Account:
        account = await load(unit, actor, account_id)
        account.record_usage(usage)
        await refresh_health(unit, account, now, uow.new_id)
        return account

    return await uow.run(work)


# --- surveys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentSurvey:
    survey: Survey
    token: str


async def send_csat(uow: Uow, ticket_id: str, secret: bytes, actor: Actor) -> SentSurvey:
    """A CSAT survey for a resolved ticket (one per ticket), answered by the customer's link."""
    now, survey_id = now_millis(uow), uow.new_id()

    async def work(unit: SuccessUnit) -> Survey:
        ticket, account = await load_ticket(unit, actor, ticket_id)
        if account is None:
            raise NotFound(f"ticket {ticket_id} not found", ticket_id=ticket_id)
        if ticket.status != TicketStatus.RESOLVED:
            raise Conflict(f"ticket {ticket_id} is not resolved yet", ticket_id=ticket_id)
        if await unit.surveys.for_ticket(ticket_id) is not None:
            raise Conflict(f"ticket {ticket_id} already has its CSAT survey", ticket_id=ticket_id)
        config = await unit.settings.config()
        survey = surveys.new_survey(
            survey_id=survey_id,
            account_id=account.account_id,
            account_name=account.name,
            kind=SurveyKind.CSAT,
            ticket_id=ticket_id,
            by=actor.user_id,
            now=now,
            valid_days=config.survey_link_valid_days,
        )
        await unit.surveys.add(survey)
        return survey

    survey = await uow.run(work)
    return SentSurvey(survey, surveys.sign(secret, survey))


async def _send_nps(
    unit: SuccessUnit, account: Account, survey_id: str, by: str, now: datetime
) -> Survey | None:
    config = await unit.settings.config()
    last = await unit.surveys.last_sent(account.account_id, SurveyKind.NPS)
    if not surveys.nps_due(last, every_days=config.nps_every_days, now=now):
        return None
    survey = surveys.new_survey(
        survey_id=survey_id,
        account_id=account.account_id,
        account_name=account.name,
        kind=SurveyKind.NPS,
        ticket_id=None,
        by=by,
        now=now,
        valid_days=config.survey_link_valid_days,
    )
    await unit.surveys.add(survey)
    return survey


async def send_nps(uow: Uow, account_id: str, secret: bytes, actor: Actor) -> SentSurvey:
    """An NPS survey for one account, if its schedule (``nps_every_days``) says one is due."""
    now, survey_id = now_millis(uow), uow.new_id()

    async def work(unit: SuccessUnit) -> Survey:
        account = await load(unit, actor, account_id)
        survey = await _send_nps(unit, account, survey_id, actor.user_id, now)
        if survey is None:
            raise Conflict(f"account {account_id} was sent an NPS survey less than its schedule ago")
        return survey

    survey = await uow.run(work)
    return SentSurvey(survey, surveys.sign(secret, survey))


async def send_due_nps(uow: Uow, secret: bytes, actor: Actor) -> list[SentSurvey]:
    """The scheduled NPS round: a survey for every active account of the book that is due one."""
    _, member = book_of(actor, None)

    async def ids(unit: SuccessUnit) -> list[str]:
        return [a.account_id for a in await unit.accounts.active(member)]

    sent = []
    for account_id in await uow.run(ids):
        now, survey_id = now_millis(uow), uow.new_id()

        async def work(
            unit: SuccessUnit, account_id: str = account_id, survey_id: str = survey_id, now: datetime = now
        ) -> Survey | None:
            account = await unit.accounts.get(account_id)
            return await _send_nps(unit, account, survey_id, actor.user_id, now) if account else None

        survey = await uow.run(work)
        if survey is not None:
            sent.append(SentSurvey(survey, surveys.sign(secret, survey)))
    return sent


async def survey_by_link(uow: Uow, token: str, secret: bytes) -> Survey:
    survey_id = surveys.verify(secret, token, now=now_millis(uow))

    async def work(unit: SuccessUnit) -> Survey:
        survey = await unit.surveys.get(survey_id)
        if survey is None:  # signed by us, yet unknown: a survey of another installation
            raise surveys.SurveyLinkInvalid("this is not a survey link of ours")
        return survey

    return await uow.run(work)


async def answer_survey(uow: Uow, token: str, score: int, comment: str | None, secret: bytes) -> Survey:
    """The customer's answer through the link: once, before it expires; CSAT lands on its
    ticket, NPS on the account's health."""
    now = now_millis(uow)
    survey_id = surveys.verify(secret, token, now=now)

    async def work(unit: SuccessUnit) -> Survey:
        survey = await unit.surveys.get(survey_id)
        if survey is None:
            raise surveys.SurveyLinkInvalid("this is not a survey link of ours")
        survey.answer(score, comment, now=now)
        if not await unit.surveys.save_answer(survey):
            raise Conflict("this survey was already answered; a link works once")
        account = await unit.accounts.get(survey.account_id)
        if survey.ticket_id is not None:
            await _rate_ticket(unit, survey, account.journey_id if account else None)
        unit.emit(survey.answered_event(), correlation_id=account.journey_id if account else None)
        if account is not None and account.status == AccountStatus.ACTIVE:
            await refresh_health(unit, account, now, uow.new_id)
        return survey

    return await uow.run(work)


async def _rate_ticket(unit: SuccessUnit, survey: Survey, journey_id: str | None) -> None:
    ticket = await unit.tickets.get(survey.ticket_id or "")
    if ticket is not None and ticket.csat is None and survey.score is not None and survey.answered_at:
        rated = ticket.rate(survey.score, by="customer", now=survey.answered_at)
        await unit.tickets.save(ticket)
        unit.emit(rated, correlation_id=journey_id)


async def account_surveys(uow: Uow, account_id: str, actor: Actor) -> list[Survey]:
    async def work(unit: SuccessUnit) -> list[Survey]:
        await load(unit, actor, account_id)
        return await unit.surveys.of_account(account_id)

    return await uow.run(work)
