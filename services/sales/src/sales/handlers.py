"""Sales' use cases, the thin service layer: load -> one domain method -> save -> emit.

Each handler runs its ``work`` in the unit of work (``uow.run``): the repositories'
writes and the emitted events (the outbox) commit in ONE MongoDB transaction, and
inside a consumer that transaction also holds the processed-event ledger entry and
the handoff receipt. A transaction may be retried, so ``work`` touches nothing but
its unit, with one exception: the round-robin turn (``team.take_turn``) is its own
atomic write outside the transaction, so a retried or aborted one skips a turn
(``crm_platform.counters``). Metrics are observed after the commit. Events about a
lead or an opportunity carry the correlation id of the journey they belong to (the
one the ``lead.qualified`` or ``upsell.spotted`` envelope came with), so analytics
can replay a customer's history across departments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_contracts import Envelope
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import RejectReason, Verdict
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    CommitmentReviewCompletedV1,
    UpsellSpottedV1,
)
from crm_platform.actor import Actor
from crm_platform.clock import now_millis, to_millis
from crm_platform.consumer import DeadLetter
from crm_platform.custom_fields import FieldSet, StoredValue
from crm_platform.errors import Conflict, NotFound
from crm_platform.imports import handlers as import_jobs
from crm_platform.imports.domain import Checkpoint, Rejection
from crm_platform.roster import round_robin
from crm_platform.shredding import held_key_of

from sales import metrics
from sales.domain import account as account_domain
from sales.domain import opportunity as opportunity_domain
from sales.domain.access import owner_for_new_record, require_access
from sales.domain.account import Account, DirectSource
from sales.domain.assignment import (
    Assignment,
    Rep,
    plan_manager_assignment,
    plan_round_robin,
    plan_upsell_owner,
)
from sales.domain.contact import Contact, email_key
from sales.domain.contact_imports import ContactImportDefaults, ContactImportJob, ContactRow, import_rows
from sales.domain.inbox import InboxItem, check_reason, check_sla_minutes
from sales.domain.opportunity import Activity, ActivityType, Opportunity, OpportunityStatus, check_activity
from sales.domain.pipeline import Stage, build_pipeline, removed_stages
from sales.domain.review import ReviewPolicy
from sales.repository import DuplicateOpportunity, SalesUnit, SalesUoW

log = logging.getLogger("crm.sales")


async def _turn(unit: SalesUnit, plan: Assignment, active: list[str]) -> tuple[str | None, int | None]:
    """The owner a plan names, taking a round-robin turn if it needs one (and the turn taken)."""
    if not plan.uses_counter:
        return plan.owner, None
    turn = await unit.team.take_turn()
    return round_robin(active, turn), turn


class _TurnAhead:
    """The active reps, their round-robin plan, and the turn a new item will take, its round
    trip (outside the transaction) started before the lead's inbox items are read instead of
    after: one round trip fewer before a lone handoff is stored. A turn taken and not used (the
    handoff superseded, or refreshing a pending item that has an owner) is a skipped position of
    the rotation, as a retried transaction's or a batch's unused reservation is."""

    def __init__(self, active: list[str], plan: Assignment, turn: Awaitable[int] | None) -> None:
        self.active, self.plan, self._turn = active, plan, turn

    @classmethod
    async def start(cls, unit: SalesUnit) -> _TurnAhead:
        active = await unit.team.active_rep_ids()
        plan = plan_round_robin(active)
        return cls(active, plan, unit.team.turn_ahead() if plan.uses_counter else None)

    async def owner(self, unit: SalesUnit) -> tuple[str | None, int | None]:
        """The next rep and the turn that chose them: the turn taken ahead, else taken now."""
        if self._turn is None:
            return await _turn(unit, self.plan, self.active)
        turn, self._turn = await self._turn, None
        return round_robin(self.active, turn), turn

    def release(self) -> None:
        """A turn taken ahead and not used: its outcome is collected when it comes (nothing
        waits for it; an error of its write is no one's)."""
        if isinstance(self._turn, asyncio.Future):
            self._turn.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _auto_assign(unit: SalesUnit, item: InboxItem, now: datetime, ahead: _TurnAhead) -> None:
    """Give an unassigned item to the next active rep, if there is one."""
    owner, turn = await ahead.owner(unit)
    if owner is not None:
        event = item.assign(owner, how=ahead.plan.how, by="system", counter=turn, now=now)
        if event is not None:
            unit.emit(event)


# -- consumers ------------------------------------------------------------------------------


async def on_lead_qualified(uow: SalesUoW, event: LeadQualifiedV1, envelope: Envelope) -> None:
    """A qualified lead lands in the inbox, assigned round-robin, with its response due date.

    One item per handoff event (the platform's ledger drops redeliveries). If the
    lead already waits in the inbox (marketing handed it over again before any
    verdict), that item is refreshed with the newer handoff instead of doubling it
    (same owner and due date; still unassigned, it gets the next rep if one is active).
    A re-sent handoff older than the item's newest one changes nothing.
    """

    async def work(unit: SalesUnit) -> None:
        now = now_millis(uow.clock)
        ahead = await _TurnAhead.start(unit)
        try:
            latest = await unit.inbox.latest_for_lead(event.lead_id)
            if latest is not None and latest.is_newer_than(envelope):
                latest.supersede(envelope)
                await unit.inbox.save(latest)
                log.info(
                    "lead %s: handoff %s is older than the inbox's; ignored", event.lead_id, envelope.event_id
                )
                return
            pending = await unit.inbox.pending_for_lead(event.lead_id)
            if pending is not None:
                pending.refresh(event, envelope, now=now, person_key=held_key_of(envelope))
                log.info(
                    "lead %s handed off again while pending: inbox item %s refreshed",
                    event.lead_id,
                    pending.id,
                )
            handoffs = await unit.inbox.count_for_lead(event.lead_id)
            item = pending or InboxItem.receive(
                event,
                envelope,
                now=now,
                sla_minutes=await unit.team.sla_minutes(),
                handoff_number=handoffs + 1,
                person_key=held_key_of(envelope),
            )
            if item.owner is None:
                await _auto_assign(unit, item, now, ahead)
        finally:
            ahead.release()
        await (unit.inbox.save(item) if pending is not None else unit.inbox.add(item))
        if item.owner is None and pending is None:
            _warn_unassigned(event.lead_id, item.id)

    await uow.run(work)


def _warn_unassigned(lead_id: str, item_id: str) -> None:
    """A new inbox item no active rep could take: say so, and how to assign it by hand."""
    log.warning(
        "no active sales rep: lead %s waits unassigned in the inbox (assign it with POST /inbox/%s/assign)",
        lead_id,
        lead_id,
        extra={"lead_id": lead_id, "inbox_item_id": item_id},
    )


async def on_upsell_spotted(uow: SalesUoW, event: UpsellSpottedV1, envelope: Envelope) -> None:
    """A new opportunity for the account's sales owner (if active; else round-robin)."""

    async def work(unit: SalesUnit) -> None:
        if await unit.opportunities.for_signal(event.signal_id) is not None:
            log.info("upsell signal %s already has an opportunity", event.signal_id)
            return
        active = await unit.team.active_rep_ids()
        plan = plan_upsell_owner(event.sales_owner, active)
        owner, turn = await _turn(unit, plan, active)
        assert owner is not None  # plan_upsell_owner always names one without the counter
        if owner not in active:
            log.warning(
                "no active sales rep: upsell signal %s stays with the account owner %s",
                event.signal_id,
                owner,
                extra={"signal_id": event.signal_id},
            )
        source = await unit.opportunities.get(event.deal_id)
        opp = Opportunity.from_upsell(
            uow.new_id(),
            event,
            stage=(await unit.team.pipeline()).first.name,
            owner=owner,
            assigned_by=plan.how.value,
            contacts=source.contacts if source else [],
            correlation_id=envelope.correlation_id,
            counter=turn,
            now=now_millis(uow.clock),
        )
        await unit.opportunities.add(opp)
        unit.emit(opp.created_event())

    await uow.run(work)


async def on_commitment_flagged(uow: SalesUoW, event: CommitmentFlaggedV1, envelope: Envelope) -> None:
    """Customer success says a promise cannot be kept: record it on the won deal."""

    async def work(unit: SalesUnit) -> None:
        opp = await unit.opportunities.get(event.deal_id)
        if opp is None or opp.status != OpportunityStatus.WON:
            raise DeadLetter("unknown_deal", f"sales has no won deal {event.deal_id!r}")
        flag = opp.flag_commitment(event, flagged_at=envelope.occurred_at, now=now_millis(uow.clock))
        if flag is None:
            log.info("commitment flag %s already recorded", event.flag_id)
            return
        if not flag.commitment_known:
            log.warning(
                "flag %s names commitment %s, not one of deal %s's",
                event.flag_id,
                event.commitment_id,
                event.deal_id,
            )
        await unit.opportunities.save(opp)

    await uow.run(work)


async def on_commitment_review_completed(
    uow: SalesUoW, event: CommitmentReviewCompletedV1, envelope: Envelope
) -> None:
    """Customer success' verdict on a commitment review: shown on the deal, it opens (or not) the win."""

    async def work(unit: SalesUnit) -> None:
        opp = await unit.opportunities.get(event.deal_id)
        if opp is None:
            raise DeadLetter("unknown_deal", f"sales has no opportunity {event.deal_id!r}")
        if not opp.record_review(event, now=now_millis(uow.clock)):
            log.info(
                "review %s of %s: not the current pending review; ignored", event.review_id, event.deal_id
            )
            return
        await unit.opportunities.save(opp)

    await uow.run(work)


# -- rep roster, config, pipeline -------------------------------------------------------------


async def replace_roster(uow: SalesUoW, reps: Sequence[tuple[str, str | None, bool]], actor: Actor) -> None:
    """Reps are keyed by user id (the token's ``sub``); ``name`` is display only."""
    now = now_millis(uow.clock)
    roster = [Rep(user_id, active, name, now, actor.user_id) for user_id, name, active in reps]

    async def work(unit: SalesUnit) -> None:
        await unit.team.replace_reps(roster)

    await uow.run(work)


async def set_rep(uow: SalesUoW, user_id: str, name: str | None, active: bool, actor: Actor) -> Rep:
    rep = Rep(user_id, active, name, now_millis(uow.clock), actor.user_id)

    async def work(unit: SalesUnit) -> Rep:
        return await unit.team.save_rep(rep)

    return await uow.run(work)


async def set_sla(uow: SalesUoW, minutes: int, actor: Actor) -> None:
    check_sla_minutes(minutes)

    async def work(unit: SalesUnit) -> None:
        await unit.team.save_sla(minutes, actor.user_id, now_millis(uow.clock))

    await uow.run(work)


async def set_review_policy(uow: SalesUoW, policy: ReviewPolicy, actor: Actor) -> None:
    async def work(unit: SalesUnit) -> None:
        await unit.team.save_review_policy(policy, actor.user_id, now_millis(uow.clock))

    await uow.run(work)


async def replace_pipeline(uow: SalesUoW, stages: Sequence[Stage], actor: Actor) -> None:
    """A new pipeline version; a stage that still holds opportunities cannot be removed."""

    async def work(unit: SalesUnit) -> None:
        current = await unit.team.pipeline()
        proposed = build_pipeline(stages, current.version + 1)
        gone = removed_stages(current, proposed)
        held = await unit.opportunities.count_in_stages(gone) if gone else {}
        if held:
            raise Conflict(
                "a stage that still holds opportunities cannot be removed: move them first", stages=held
            )
        await unit.team.save_pipeline(proposed, actor.user_id, now_millis(uow.clock))

    await uow.run(work)


# -- inbox ------------------------------------------------------------------------------------


async def _load_item(unit: SalesUnit, lead_id: str) -> InboxItem:
    item = await unit.inbox.latest_for_lead(lead_id)
    if item is None:
        raise NotFound(f"lead {lead_id!r} is not in the sales inbox", lead_id=lead_id)
    return item


async def assign(uow: SalesUoW, lead_id: str, owner: str | None, actor: Actor) -> InboxItem:
    """A manager (re)assigns a pending item: to the rep named, or the next in the rotation."""

    async def work(unit: SalesUnit) -> InboxItem:
        item = await _load_item(unit, lead_id)
        item.check_assignable()
        active = await unit.team.active_rep_ids()
        plan = plan_manager_assignment(owner, active)
        chosen, turn = await _turn(unit, plan, active)
        assert chosen is not None  # the roster has an active rep
        event = item.assign(chosen, how=plan.how, by=actor.user_id, counter=turn, now=now_millis(uow.clock))
        if event is not None:
            await unit.inbox.save(item)
            unit.emit(event, correlation_id=item.correlation_id)
        return item

    return await uow.run(work)


@dataclass(frozen=True)
class VerdictResult:
    item: InboxItem
    opportunity: Opportunity | None


async def decide(
    uow: SalesUoW,
    lead_id: str,
    verdict: Verdict,
    actor: Actor,
    *,
    reason_code: RejectReason | None = None,
    note: str | None = None,
) -> VerdictResult:
    """The verdict on the lead's current inbox item; accepting opens an opportunity."""
    check_reason(verdict, reason_code)

    async def work(unit: SalesUnit) -> VerdictResult:
        item = await _load_item(unit, lead_id)
        now = now_millis(uow.clock)
        opp_id = uow.new_id() if verdict == Verdict.ACCEPTED else None
        decided = item.decide(
            verdict, actor, now=now, reason_code=reason_code, note=note, opportunity_id=opp_id
        )
        opp = None
        if opp_id is not None:
            opp = item.open_opportunity(
                opp_id, stage=(await unit.team.pipeline()).first.name, by=actor, now=now
            )
            await unit.opportunities.add(opp)
            unit.emit(opp.created_event(), correlation_id=item.correlation_id)
        await unit.inbox.save(item)
        unit.emit(decided, correlation_id=item.correlation_id)
        return VerdictResult(item, opp)

    try:
        result = await uow.run(work)
    except DuplicateOpportunity:
        # A concurrent acceptance of the same item opened its opportunity first.
        raise Conflict("this lead already has a verdict (given concurrently)") from None
    metrics.observe_verdict(result.item)
    return result


# -- opportunities ----------------------------------------------------------------------------


async def _load_opportunity(unit: SalesUnit, opp_id: str, actor: Actor) -> Opportunity:
    opp = await unit.opportunities.get(opp_id)
    if opp is None:
        raise NotFound(f"no opportunity {opp_id!r}", opportunity_id=opp_id)
    require_access(actor, opp.owner, "opportunity")
    return opp


async def move_stage(
    uow: SalesUoW,
    opp_id: str,
    target: str,
    fields: Mapping[str, object],
    contacts: Sequence[Mapping[str, object]],
    actor: Actor,
) -> Opportunity:
    """Move to a stage (its required fields checked); a win hands the deal to customer success."""

    async def work(unit: SalesUnit) -> Opportunity:
        opp = await _load_opportunity(unit, opp_id, actor)
        pipeline = await unit.team.pipeline()
        now = now_millis(uow.clock)
        events = opp.move_to(
            pipeline,
            target,
            fields,
            contacts,
            by=actor.user_id,
            now=now,
            new_id=uow.new_id,
            review_policy=await unit.team.review_policy(),
        )
        await unit.opportunities.save(opp)
        unit.emit_all(events, correlation_id=opp.correlation_id)
        return opp

    result = await uow.run(work)
    metrics.observe_stage_move(target)
    return result


async def update_fields(
    uow: SalesUoW,
    opp_id: str,
    fields: Mapping[str, object],
    contacts: Sequence[Mapping[str, object]],
    actor: Actor,
    custom: CustomEdit | None = None,
) -> Opportunity:
    """Set fields, custom fields (checked against their definitions: 422 naming the field)
    and contacts on an open opportunity without moving it."""

    async def work(unit: SalesUnit) -> Opportunity:
        opp = await _load_opportunity(unit, opp_id, actor)
        values = custom.fields.edit(opp.custom, custom.given) if custom is not None else None
        opp.update_fields(fields, contacts, now=now_millis(uow.clock), new_id=uow.new_id, custom=values)
        await unit.opportunities.save(opp)
        return opp

    return await uow.run(work)


async def log_activity(
    uow: SalesUoW,
    opp_id: str,
    activity_type: ActivityType,
    summary: str,
    actor: Actor,
    *,
    occurred_at: datetime | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
) -> Activity:
    now = now_millis(uow.clock)
    when = to_millis(occurred_at) if occurred_at is not None else now
    check_activity(activity_type, amount, when, now)  # bad input is a 422 before any lookup

    async def work(unit: SalesUnit) -> Activity:
        opp = await _load_opportunity(unit, opp_id, actor)
        activity, event = opp.log_activity(
            uow.new_id(),
            activity_type,
            summary,
            by=actor.user_id,
            occurred_at=when,
            now=now,
            amount=amount,
            currency=currency,
        )
        await unit.opportunities.add_activity(activity)
        await unit.opportunities.save(opp)
        unit.emit(event, correlation_id=opp.correlation_id)
        return activity

    return await uow.run(work)


async def request_review(uow: SalesUoW, opp_id: str, actor: Actor) -> Opportunity:
    """Ask customer success to review the opportunity's commitments (a handoff to the service desk)."""

    async def work(unit: SalesUnit) -> Opportunity:
        opp = await _load_opportunity(unit, opp_id, actor)
        policy = await unit.team.review_policy()
        event = opp.request_review(policy, uow.new_id(), by=actor.user_id, now=now_millis(uow.clock))
        await unit.opportunities.save(opp)
        unit.emit(event, correlation_id=opp.correlation_id)
        return opp

    return await uow.run(work)


async def acknowledge_flag(uow: SalesUoW, opp_id: str, flag_id: str, actor: Actor) -> Opportunity:
    """After the win: sales has seen customer success' flag on a promise (sent back to the desk)."""

    async def work(unit: SalesUnit) -> Opportunity:
        opp = await _load_opportunity(unit, opp_id, actor)
        event = opp.acknowledge_flag(flag_id, by=actor.user_id, now=now_millis(uow.clock))
        await unit.opportunities.save(opp)
        unit.emit(event, correlation_id=opp.correlation_id)
        return opp

    return await uow.run(work)


async def resolve_flag(
    uow: SalesUoW, opp_id: str, flag_id: str, resolution: str, actor: Actor
) -> Opportunity:
    """After the win: sales sorted a flagged promise out; the account at the desk shows how."""

    async def work(unit: SalesUnit) -> Opportunity:
        opp = await _load_opportunity(unit, opp_id, actor)
        event = opp.resolve_flag(flag_id, resolution, by=actor.user_id, now=now_millis(uow.clock))
        await unit.opportunities.save(opp)
        unit.emit(event, correlation_id=opp.correlation_id)
        return opp

    return await uow.run(work)


# -- records sales creates itself (referrals, outbound) ------------------------------------------


@dataclass(frozen=True)
class NewAccount:
    name: str
    source: DirectSource
    owner: str | None = None
    industry: str | None = None
    website: str | None = None
    custom: Mapping[str, StoredValue] | None = None  # checked against the account's FieldSet
    fields: FieldSet = account_domain.NO_CUSTOM_FIELDS


async def create_account(uow: SalesUoW, new: NewAccount, actor: Actor) -> Account:
    """An account sales opens itself, in its creator's book (or a rep a manager names)."""

    async def work(unit: SalesUnit) -> Account:
        owner = owner_for_new_record(actor, new.owner, await unit.team.active_rep_ids())
        account, event = Account.open(
            uow.new_id(), new.name, owner=owner, source=new.source, by=actor.user_id,
            now=now_millis(uow.clock), industry=new.industry, website=new.website, custom=new.custom,
            fields=new.fields,
        )  # fmt: skip
        await unit.accounts.add(account)
        unit.emit(event, correlation_id=account.id)
        return account

    return await uow.run(work)


@dataclass(frozen=True)
class NewContact:
    email: str
    name: str
    source: DirectSource
    account_id: str | None = None
    owner: str | None = None
    phone: str | None = None
    role: str | None = None


async def _load_account(unit: SalesUnit, account_id: str, actor: Actor) -> Account:
    account = await unit.accounts.get(account_id)
    if account is None:
        raise NotFound(f"no account {account_id!r}", account_id=account_id, field="body.account_id")
    require_access(actor, account.owner, "account")
    return account


async def create_contact(uow: SalesUoW, new: NewContact, actor: Actor) -> Contact:
    """A contact sales adds itself (one per email: a known one is a 409 naming it)."""

    async def work(unit: SalesUnit) -> Contact:
        owner = owner_for_new_record(actor, new.owner, await unit.team.active_rep_ids())
        if new.account_id is not None:
            await _load_account(unit, new.account_id, actor)
        contact, event = Contact.add(
            uow.new_id(), email=new.email, name=new.name, owner=owner, source=new.source.value,
            by=actor.user_id, now=now_millis(uow.clock), account_id=new.account_id, phone=new.phone,
            role=new.role,
        )  # fmt: skip
        await unit.contacts.add(contact)
        unit.emit(event, correlation_id=contact.id)
        return contact

    return await uow.run(work)


@dataclass(frozen=True)
class CustomEdit:
    """An edit's ``custom`` object and the record type's definitions it is checked against."""

    fields: FieldSet
    given: Mapping[str, Any]


@dataclass(frozen=True)
class NewOpportunity:
    account_id: str
    source: DirectSource
    contact_ids: tuple[str, ...] = ()
    owner: str | None = None
    description: str | None = None
    custom: Mapping[str, StoredValue] | None = None  # checked against the opportunity's FieldSet
    fields: FieldSet = opportunity_domain.NO_CUSTOM_FIELDS


async def create_opportunity(uow: SalesUoW, new: NewOpportunity, actor: Actor) -> Opportunity:
    """An opportunity sales opens itself for one of its accounts (``origin: direct``).

    It reaches analytics (``opportunity.created`` v2, source and account) and, once won,
    customer success (the ``deal.won`` handoff) like any other."""

    async def work(unit: SalesUnit) -> Opportunity:
        owner = owner_for_new_record(actor, new.owner, await unit.team.active_rep_ids())
        account = await _load_account(unit, new.account_id, actor)
        contacts = await unit.contacts.get_many(list(new.contact_ids))
        missing = sorted(set(new.contact_ids) - {c.id for c in contacts})
        if missing:
            raise NotFound(f"no contact {missing[0]!r}", contact_ids=missing, field="body.contact_ids")
        for contact in contacts:
            require_access(actor, contact.owner, "contact")
        opp = Opportunity.direct(
            uow.new_id(), account, contacts, source=new.source, stage=(await unit.team.pipeline()).first.name,
            owner=owner, by=actor.user_id, now=now_millis(uow.clock), description=new.description,
            custom=new.custom,
        )  # fmt: skip
        await unit.opportunities.add(opp)
        unit.emit(opp.created_event(new.fields), correlation_id=opp.correlation_id)
        return opp

    return await uow.run(work)


# -- contact imports (the job's own commands are crm_platform.imports.handlers) -----------------


async def import_owner(uow: SalesUoW, actor: Actor, requested: str | None) -> ContactImportDefaults:
    """Whose book an import's contacts go to: the creation rule of ``POST /contacts``."""

    async def work(unit: SalesUnit) -> ContactImportDefaults:
        return ContactImportDefaults(owner_for_new_record(actor, requested, await unit.team.active_rep_ids()))

    return await uow.run(work)


async def import_contacts(
    uow: SalesUoW,
    job_id: str,
    expected: Checkpoint,
    to: Checkpoint,
    rows: Sequence[ContactRow],
    rejected: Sequence[Rejection],
) -> ContactImportJob:
    """One batch of a contact import in ONE transaction: its rows by ``POST /contacts``' rule
    (one contact per email; a known email merges), a ``sales.contact_created`` per new contact,
    its rejected rows and the job's checkpoint. ``StaleCheckpoint`` when the job is no longer
    at ``expected`` (another worker took it over): nothing of the batch is kept."""
    emails = sorted({email_key(r.email) for r in rows})

    async def work(unit: SalesUnit) -> ContactImportJob:
        job: ContactImportJob = await import_jobs.load(unit, job_id)
        now = now_millis(uow.clock)
        batch = import_rows(await unit.contacts.by_emails(emails), rows, job, uow.new_id, now)
        await unit.contacts.add_many(batch.new)
        for contact in batch.changed:
            await unit.contacts.save(contact)
        for contact, event in zip(batch.new, batch.events, strict=True):
            unit.emit(event, correlation_id=contact.id)
        await unit.imports.add_rejections(rejected)
        advanced = job.advance(expected, to, job.counts.plus(len(rows), batch.merged, len(rejected)), now)
        await unit.imports.save(advanced)
        return advanced

    return await uow.run(work)
