"""Marketing's use cases: load -> one domain method -> save -> emit, in one unit of work.

Each use case runs in ``uow.run(work)``: one MongoDB transaction holding the state
change, the behaviour log and the outbox (inside the verdict consumer, the same
transaction as the processed-event ledger). ``work`` may be retried, so it only
touches its unit; metrics are counted and logs written after the commit.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from crm_contracts import Envelope
from crm_contracts.events.common import Behaviour
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import LeadAssignedV1, LeadVerdictV1
from crm_platform import audit
from crm_platform.actor import Actor
from crm_platform.clock import now_millis, to_millis
from crm_platform.consumer import DeadLetter
from crm_platform.custom_fields import FieldSet
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.imports import handlers as import_jobs
from crm_platform.uow import UnitOfWork
from pymongo.errors import DuplicateKeyError

from leads import metrics
from leads.domain import imports
from leads.domain import leads as domain
from leads.domain.leads import BehaviourRecord, Capture, Lead, MetaValue, VerdictRecord
from leads.domain.scoring import BehaviourRule, InvalidRules, RulesAuthor, ScoringRules, next_version
from leads.repository import LeadsUnit

log = logging.getLogger("leads.handlers")
T = TypeVar("T")
Uow = UnitOfWork[LeadsUnit]

# A unique index answered "already there" (a concurrent capture of the same email,
# a concurrent retry of the same behaviour): run again and see the winner's write.
_RACE_RETRIES = 3


async def _load(unit: LeadsUnit, lead_id: str) -> Lead:
    lead = await unit.leads.get(lead_id)
    if lead is None:
        raise NotFound(f"no lead '{lead_id}'", lead_id=lead_id)
    return lead


# -- capture ---------------------------------------------------------------------------------


async def capture_lead(
    uow: Uow, capture: Capture, fields: FieldSet = domain.NO_CUSTOM_FIELDS
) -> domain.CaptureOutcome:

    async def work(unit: LeadsUnit) -> domain.CaptureOutcome:
        # The lead as if the email were new, inserted in the same round trip as the dedupe
        # lookup; a stored lead with this email is answered instead (nothing written) and merges.
        now = now_millis(uow.clock)
        outcome = domain.capture(None, uow.new_id(), capture, now, fields)
        existing = await unit.leads.add_unless_email_known(outcome.lead)
        if existing is not None:
            outcome = domain.capture(existing, outcome.lead.id, capture, now, fields)
            await unit.leads.save(outcome.lead)
        unit.emit_all(outcome.events, correlation_id=outcome.lead.id)
        return outcome

    outcome = await _retry_races(uow, work)
    metrics.LEADS_CAPTURED.labels(str(outcome.merged).lower()).inc()
    return outcome


async def capture_leads(
    uow: Uow, captures: Sequence[Capture], fields: FieldSet = domain.NO_CUSTOM_FIELDS
) -> tuple[domain.CaptureOutcome, ...]:
    """Many captures in ONE unit of work, with the effects of :func:`capture_lead` one by one.

    A few round trips per request instead of several per lead: one read of the batch's
    emails, one insert of the new leads, one write of the merged ones, the outbox. Each
    capture emits its own ``lead.captured`` in the batch's order (the order per lead).
    All or none: a lead captured meanwhile by another request runs the batch again.
    """

    async def work(unit: LeadsUnit) -> tuple[domain.CaptureOutcome, ...]:
        return (await store_captures(unit, captures, uow, now_millis(uow.clock), fields)).outcomes

    outcomes = await _retry_races(uow, work)
    count_captured(outcomes)
    return outcomes


def count_captured(outcomes: Sequence[domain.CaptureOutcome]) -> None:
    """``crm_leads_captured`` for many captures: one increment per verdict, not one labelled
    lookup and increment per lead (about 1.2 us of leads' CPU per bulk-captured lead)."""
    merged = sum(1 for outcome in outcomes if outcome.merged)
    if merged:
        metrics.LEADS_CAPTURED.labels("true").inc(merged)
    if len(outcomes) > merged:
        metrics.LEADS_CAPTURED.labels("false").inc(len(outcomes) - merged)


async def capture_together(
    uow: Uow,
    captures: Sequence[Capture],
    fields: FieldSet,
    audits: Sequence[audit.Context],
    contexts: Sequence[contextvars.Context],
) -> tuple[domain.CaptureOutcome, ...]:
    """Several requests' single captures (distinct emails) in ONE unit of work, each with the
    effects :func:`capture_lead` has alone: its verdict (new or merged), its own ``lead.captured``
    emitted in its request's context (its trace), its own audit entry naming its request
    (``audits[i]``: who, the route, request and correlation ids). Only the round trips and the
    commit are shared (the batch path's: one read of the emails, one insert, one write of the
    merged leads, one outbox row); leads' group commit (:mod:`leads.capture_groups`).
    """
    by_record: dict[str, audit.Context] = {}

    async def work(unit: LeadsUnit) -> tuple[domain.CaptureOutcome, ...]:
        known = await unit.leads.get_many_by_email({domain.normalize_email(c.email) for c in captures})
        batch = domain.capture_batch(known, captures, uow.new_id, now_millis(uow.clock), fields)
        by_record.clear()
        by_record.update({o.lead.id: a for o, a in zip(batch.outcomes, audits, strict=True)})
        await unit.leads.add_many(batch.new)
        await unit.leads.save_many(batch.merged)
        for outcome, context in zip(batch.outcomes, contexts, strict=True):
            context.run(unit.emit_all, outcome.events, correlation_id=outcome.lead.id, batched=True)
        return batch.outcomes

    with audit.records_by(by_record):
        outcomes = await _retry_races(uow, work)
    count_captured(outcomes)
    return outcomes


async def store_captures(
    unit: LeadsUnit,
    captures: Sequence[Capture],
    uow: Uow,
    now: datetime,
    fields: FieldSet = domain.NO_CUSTOM_FIELDS,
) -> domain.BatchCaptureOutcome:
    """The batch path that bulk capture and every import batch share, inside the caller's unit:
    one read of the batch's emails, the captures one by one by ``domain.capture_batch``'s rules,
    one insert of the new leads, one write of the merged ones, and each capture's own events
    (``lead.captured`` built by the domain, one per lead, in the batch's order) stored
    together in the outbox (``batched``: one outbox row for the batch, crm_platform.mongo).
    """
    known = await unit.leads.get_many_by_email({domain.normalize_email(c.email) for c in captures})
    batch = domain.capture_batch(known, captures, uow.new_id, now, fields)
    await unit.leads.add_many(batch.new)
    await unit.leads.save_many(batch.merged)
    for outcome in batch.outcomes:
        unit.emit_all(outcome.events, correlation_id=outcome.lead.id, batched=True)
    return batch


# -- edit ------------------------------------------------------------------------------------


async def edit_lead(
    uow: Uow,
    lead_id: str,
    change: domain.LeadEdit,
    fields: FieldSet = domain.NO_CUSTOM_FIELDS,
    *,
    actor: Actor,
) -> Lead:
    """Marketing corrects a lead's details; the audit log keeps each field's history, and
    ``lead.edited`` (field names only) goes out in the same transaction."""

    async def work(unit: LeadsUnit) -> Lead:
        outcome = (await _load(unit, lead_id)).edit(change, now_millis(uow.clock), actor, fields)
        if outcome.changed:
            await unit.leads.save(outcome.lead)
            unit.emit_all(outcome.events, correlation_id=outcome.lead.id)
        return outcome.lead

    return await uow.run(work)


# -- import ----------------------------------------------------------------------------------


async def create_import(
    uow: Uow,
    fmt: imports.ImportFormat,
    mapping: Mapping[str, str] | None,
    defaults: imports.ImportDefaults,
    *,
    actor: Actor,
    mapping_name: str | None = None,
) -> imports.ImportJob:
    """A new import, waiting for its file (``mapping`` None: the default mapping from the header)."""
    return await import_jobs.create_import(
        uow, imports.ImportJob, fmt, mapping, defaults, actor=actor, mapping_name=mapping_name
    )


async def save_mapping(uow: Uow, name: str, columns: Mapping[str, str], *, actor: Actor) -> dict[str, str]:
    """Store a column mapping under ``name`` (replacing one of that name)."""
    return await import_jobs.save_mapping(uow, imports.ImportJob, name, columns, actor=actor)


async def _load_import(unit: LeadsUnit, job_id: str) -> imports.ImportJob:
    job: imports.ImportJob = await import_jobs.load(unit, job_id)
    return job


async def begin_upload(uow: Uow, job_id: str, file_name: str | None) -> imports.ImportJob:
    job: imports.ImportJob = await import_jobs.begin_upload(uow, job_id, file_name)
    return job


async def finish_upload(
    uow: Uow, job_id: str, size: int, header: Sequence[str], data_start: int
) -> imports.ImportJob:
    """The file is stored whole: the job is queued for a worker."""
    job: imports.ImportJob = await import_jobs.finish_upload(uow, job_id, size, header, data_start)
    return job


async def import_batch(
    uow: Uow,
    job_id: str,
    expected: imports.Checkpoint,
    to: imports.Checkpoint,
    captures: Sequence[Capture],
    rejected: Sequence[imports.Rejection],
    fields: FieldSet = domain.NO_CUSTOM_FIELDS,
) -> imports.Counts:
    """One batch of an import in ONE transaction: its captures exactly as ``capture_leads``
    (merge by email, one ``lead.captured`` each), its rejected rows, and the batch's record
    (where it ends, its counts: the worker folds it into the job's checkpoint after the
    commit, so the next batch's transaction can run beside this one; crm_platform.imports).

    ``StaleCheckpoint`` if the job ended or moved past ``expected``, or a batch from
    ``expected`` is stored already (another worker took the job over): nothing of the batch
    is kept, so no row is imported twice. Returns the batch's counts.
    """

    async def work(unit: LeadsUnit) -> imports.Counts:
        (await _load_import(unit, job_id)).check_batch(expected)
        batch = await store_captures(unit, captures, uow, now_millis(uow.clock), fields)
        await unit.imports.add_rejections(rejected)
        merged = sum(1 for o in batch.outcomes if o.merged)
        counts = imports.Counts.of_batch(len(captures), merged, len(rejected))
        await unit.imports.add_batch(job_id, expected, to, counts)
        return counts

    counts = await _retry_races(uow, work)
    metrics.LEADS_CAPTURED.labels("true").inc(counts.merged)
    metrics.LEADS_CAPTURED.labels("false").inc(len(captures) - counts.merged)
    return counts


async def end_import(uow: Uow, job_id: str, failure: str | None = None) -> imports.ImportJob:
    """The last batch is in (``failure`` None) or the file cannot be imported (why)."""
    job: imports.ImportJob = await import_jobs.end_import(uow, job_id, failure)
    return job


# -- behaviour -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BehaviourResult:
    lead: Lead
    behaviour_id: str
    duplicate: bool  # the same external_id was recorded before: nothing counted again
    counted_in_score: bool
    qualified_now: bool  # this behaviour handed the lead to sales


async def record_behaviour(
    uow: Uow,
    lead_id: str,
    behaviour: Behaviour,
    *,
    occurred_at: datetime | None,
    meta: Mapping[str, MetaValue] | None,
    external_id: str | None,
    actor: Actor,
) -> BehaviourResult:
    async def work(unit: LeadsUnit) -> BehaviourResult:
        lead = await _load(unit, lead_id)
        if external_id is not None and (seen := await unit.behaviours.by_external_id(lead_id, external_id)):
            return BehaviourResult(lead, seen.id, True, seen.in_cycle, False)
        now = now_millis(uow.clock)
        when = to_millis(occurred_at) if occurred_at is not None else now
        outcome = lead.record_behaviour(behaviour, when, await unit.rules.current(), now)
        record = BehaviourRecord.of(
            uow.new_id(),
            outcome,
            behaviour=behaviour,
            occurred_at=when,
            by=actor,
            meta=meta,
            external_id=external_id,
        )
        await unit.behaviours.add(record)
        # A handoff's person key is looked up beside the lead's write, not after the emit.
        await unit.keys_beside(unit.leads.save(outcome.lead), outcome.events)
        # Batched: a handoff, its key record and its behaviour's event share ONE outbox row.
        unit.emit_all(outcome.events, correlation_id=lead_id, batched=True)
        return BehaviourResult(outcome.lead, record.id, False, outcome.in_cycle, outcome.qualified)

    result = await _retry_races(uow, work)
    _counted(result, behaviour)
    return result


def _counted(result: BehaviourResult, behaviour: Behaviour) -> None:
    """A single behaviour's metrics and log line once committed (in its request's context)."""
    if not result.duplicate:
        metrics.BEHAVIOURS_RECORDED.labels(behaviour.value).inc()
    if result.qualified_now:
        lead = result.lead
        metrics.LEADS_QUALIFIED.inc()
        log.info(
            "lead %s qualified (score %.1f >= %.1f): handed to sales",
            lead.id,
            lead.score,
            lead.threshold or 0,
            extra={"lead_id": lead.id, "handoff_count": lead.handoff_count},
        )


async def record_together(
    uow: Uow,
    inputs: Sequence[domain.BehaviourInput],
    audits: Sequence[audit.Context],
    contexts: Sequence[contextvars.Context],
) -> tuple[BehaviourResult, ...]:
    """Several requests' single behaviours (distinct leads, each ``by`` its own user) in ONE unit
    of work, each with the effects :func:`record_behaviour` has alone: its answer, its events
    emitted in its request's context (its trace), its audit entries naming its request
    (``audits[i]``: who, the route, request and correlation ids), its metrics and log line.
    Only the round trips and the commit are shared (the tracker batch's: one read of the leads,
    one insert of the records, one write of the leads, one outbox row); leads' group commit
    (:mod:`leads.behaviour_groups`). A lead that does not exist fails the group (each request
    then runs alone and gets its own answer)."""
    lead_ids = {i.lead_id for i in inputs}
    pairs = {(i.lead_id, i.external_id) for i in inputs if i.external_id is not None}
    by_record: dict[str, audit.Context] = {}

    async def work(unit: LeadsUnit) -> tuple[domain.BehaviourBatchItem, ...]:
        leads = await unit.leads.get_many(lead_ids)
        if missing := sorted(lead_ids - leads.keys()):
            raise NotFound(f"no lead '{missing[0]}'", lead_id=missing[0])
        seen = await unit.behaviours.by_external_ids(pairs)
        rules, now = await unit.rules.current(), now_millis(uow.clock)
        batch = domain.record_batch(leads, seen, inputs, rules, now=now, new_id=uow.new_id)
        by_record.clear()
        for item, who in zip(batch.items, audits, strict=True):
            by_record.update({item.behaviour_id: who, item.lead.id: who})
        await unit.behaviours.add_many(batch.records)
        # The handoffs' person keys looked up beside the leads' write, not after the emit.
        await unit.keys_beside(unit.leads.save_many(batch.leads), [e for i in batch.items for e in i.events])
        for item, context in zip(batch.items, contexts, strict=True):
            context.run(unit.emit_all, item.events, correlation_id=item.lead.id, batched=True)
        return batch.items

    with audit.records_by(by_record):
        items = await _retry_races(uow, work)
    results = tuple(
        BehaviourResult(i.lead, i.behaviour_id, i.duplicate, i.counted_in_score, i.qualified_now)
        for i in items
    )
    for each, result, context in zip(inputs, results, contexts, strict=True):
        context.run(_counted, result, each.behaviour)
    return results


async def record_behaviours(
    uow: Uow, inputs: Sequence[domain.BehaviourInput], *, actor: Actor
) -> tuple[domain.BehaviourBatchItem, ...]:
    """Many behaviours in ONE unit of work, with the effects of :func:`record_behaviour` one
    by one: one read of the leads, one of the seen ``external_id``s, one insert of the
    records, one write of the leads, the outbox. A tracker sending its events in batches
    costs a few round trips per request instead of several per behaviour. All or none: a
    lead the batch names that does not exist is a 404 naming it, and nothing is kept.
    """
    lead_ids = {i.lead_id for i in inputs}
    pairs = {(i.lead_id, i.external_id) for i in inputs if i.external_id is not None}

    async def work(unit: LeadsUnit) -> tuple[domain.BehaviourBatchItem, ...]:
        leads = await unit.leads.get_many(lead_ids)
        if missing := sorted(lead_ids - leads.keys()):
            shown = ", ".join(f"'{m}'" for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise NotFound(f"no lead {shown}: nothing recorded", lead_ids=missing[:100])
        seen = await unit.behaviours.by_external_ids(pairs)
        now = now_millis(uow.clock)
        batch = domain.record_batch(
            leads, seen, inputs, await unit.rules.current(), now=now, new_id=uow.new_id, by=actor
        )
        await unit.behaviours.add_many(batch.records)
        await unit.leads.save_many(batch.leads)
        _emit_tracker_batch(unit, batch.items)
        return batch.items

    items = await _retry_races(uow, work)
    for each, item in zip(inputs, items, strict=True):
        if not item.duplicate:
            metrics.BEHAVIOURS_RECORDED.labels(each.behaviour.value).inc()
        if item.qualified_now:
            metrics.LEADS_QUALIFIED.inc()
    qualified = [item.lead.id for item in items if item.qualified_now]
    if qualified:
        log.info(
            "%d leads qualified by a batch of %d behaviours: handed to sales", len(qualified), len(items)
        )
    return items


def _emit_tracker_batch(unit: LeadsUnit, items: Sequence[domain.BehaviourBatchItem]) -> None:
    """A tracker's batch's events: its behaviour events first, in the batch's order, then its
    handoffs in order (the keys they are sealed with just ahead of them), all sharing ONE
    outbox row (``batched``; a handoff's re-send puts it back alone: crm_platform.receipts).
    The order per lead on each topic is the batch's (the behaviours are on the leads' events
    topic, the handoffs on their own), and no behaviour is published after the handoff it led
    to. One outbox row, insert, relay mark and audit mark per batch instead of one per
    behaviour (tenth session) and one per handoff (twelfth: a handoff's second largest mongod
    cost was leads' outbox)."""
    handoffs: list[tuple[LeadQualifiedV1, str]] = []
    for item in items:
        for event in item.events:
            if isinstance(event, LeadQualifiedV1):
                handoffs.append((event, item.lead.id))
            else:
                unit.emit(event, correlation_id=item.lead.id, batched=True)
    for handoff, lead_id in handoffs:
        unit.emit(handoff, correlation_id=lead_id, batched=True)


# -- scoring rules ---------------------------------------------------------------------------


async def change_rules(
    uow: Uow,
    rules: Mapping[Behaviour, BehaviourRule],
    threshold: float,
    *,
    actor: Actor,
    note: str | None = None,
    expected_version: int | None = None,
) -> ScoringRules:
    """Store the next version of the rules; scores change on each lead's next behaviour."""

    async def work(unit: LeadsUnit) -> ScoringRules:
        current = await unit.rules.current(fresh=True)
        if expected_version is not None and expected_version != current.version:
            raise Conflict(
                f"the rules are at version {current.version}, not {expected_version}: "
                "reload them and apply your change again",
                current_version=current.version,
                expected_version=expected_version,
            )
        author = RulesAuthor(actor.user_id, actor.display_name)
        try:
            new = next_version(current, rules, threshold, author=author, at=now_millis(uow.clock), note=note)
        except InvalidRules as exc:
            raise RuleViolation(f"invalid scoring rules: {exc}", field=exc.field) from None
        await unit.rules.add(new)
        return new

    try:
        new = await uow.run(work)
    except DuplicateKeyError:
        raise Conflict("the rules were changed at the same moment by someone else: retry") from None
    log.info(
        "scoring rules v%d stored by %s",
        new.version,
        actor.display_name,
        extra={"rules_version": new.version, "changed_by": actor.display_name},
    )
    return new


# -- sales' verdict (consumed) ---------------------------------------------------------------


async def on_lead_verdict(uow: Uow, event: LeadVerdictV1, envelope: Envelope) -> None:
    """Close marketing's loop: accepted, rejected (with reason) or recycled.

    Unknown lead -> dead letter ``unknown_lead`` (the event can never apply here).
    A lead not in 'qualified' -> recorded as ignored and logged, no state change,
    no event: a verdict only answers a handoff that is still open.
    """

    async def work(unit: LeadsUnit) -> domain.VerdictOutcome:
        lead = await unit.leads.get(event.lead_id)
        if lead is None:
            raise DeadLetter("unknown_lead", f"no lead '{event.lead_id}' in marketing's records")
        now, decided_at = now_millis(uow.clock), to_millis(envelope.occurred_at)
        reason = event.reason_code.value if event.reason_code is not None else None
        outcome = lead.apply_verdict(event.verdict.value, reason, decided_at, now)
        await unit.verdicts.add(
            VerdictRecord(
                str(envelope.event_id),
                lead.id,
                event.verdict.value,
                reason,
                event.note,
                event.decided_by,
                event.opportunity_id,
                decided_at,
                now,
                outcome.applied,
                outcome.ignored_because,
                lead.status,
            )
        )
        if outcome.applied:
            await unit.leads.save(outcome.lead)
            unit.emit_all(outcome.events)
        return outcome

    outcome = await uow.run(work)
    if not outcome.applied:
        log.warning(
            "verdict '%s' for lead %s ignored: %s",
            event.verdict.value,
            event.lead_id,
            outcome.ignored_because,
            extra={"lead_id": event.lead_id, "event_id": str(envelope.event_id), "outcome": "ignored"},
        )
    # Counted once the consumer's transaction is committed or about to be: a transient
    # retry of the whole consumer transaction may count twice (rare, harmless).
    metrics.LEAD_VERDICTS.labels(event.verdict.value, "applied" if outcome.applied else "ignored").inc()


async def on_lead_assigned(uow: Uow, event: LeadAssignedV1, envelope: Envelope) -> None:
    """Keep which rep sales assigned the lead to (a rep reads only their own leads: domain.access).

    Idempotent (the platform's ledger drops a copy already processed) and safe in any order:
    the assignment carries the time sales made it (the envelope's), and an assignment as old as
    the one stored or older changes nothing, so a late copy never undoes a reassignment.
    Unknown lead -> dead letter ``unknown_lead`` (sales is only handed marketing's leads).
    """

    async def work(unit: LeadsUnit) -> bool:
        at = to_millis(envelope.occurred_at)
        # The usual case, a lead sales was just handed, in one write (a read fewer per handoff).
        if await unit.leads.assign_if_qualified(event.lead_id, event.owner, at):
            return True
        lead = await unit.leads.get(event.lead_id)
        if lead is None:
            raise DeadLetter("unknown_lead", f"no lead '{event.lead_id}' in marketing's records")
        assigned = lead.assign(event.owner, at)
        if assigned is not None:
            await unit.leads.save(assigned)
        return assigned is not None

    if not await uow.run(work):
        log.info(
            "assignment of lead %s to %s ignored: the lead holds a later one",
            event.lead_id,
            event.owner,
            extra={"lead_id": event.lead_id, "event_id": str(envelope.event_id), "outcome": "stale"},
        )


# -- helpers ---------------------------------------------------------------------------------


async def _retry_races(uow: Uow, work: Callable[[LeadsUnit], Awaitable[T]]) -> T:
    for attempt in range(1, _RACE_RETRIES + 1):
        try:
            return await uow.run(work)
        except DuplicateKeyError:
            if attempt == _RACE_RETRIES:
                raise
            log.info("unique-key race (attempt %d); running again", attempt)
    raise AssertionError("unreachable")
