"""Marketing's use cases: command or event -> domain -> store + emitted events.

Each use case is one transaction (state, behaviour log and outbox commit together).
The ``work`` functions may be retried by the driver, so they only touch the
database through ``tx`` and count metrics only after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from crm_contracts import Envelope
from crm_contracts.events.common import Behaviour, Contact, ScoreReason
from crm_contracts.events.common import Consent as ConsentV1
from crm_contracts.events.leads import (
    BehaviourRecordedV1,
    LeadCapturedV1,
    LeadQualifiedV1,
    LeadStatusChangedV1,
)
from crm_contracts.events.sales import LeadVerdictV1
from crm_platform.actor import Actor
from crm_platform.clock import now_millis, to_millis
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.ids import new_id
from crm_platform.mongo import Store, Tx
from pymongo.errors import DuplicateKeyError

from leads import store as repo
from leads.domain import leads as domain
from leads.domain.leads import Capture, Lead
from leads.domain.scoring import BehaviourRule, InvalidRules, RulesAuthor, ScoringRules, next_version
from leads.metrics import BEHAVIOURS_RECORDED, LEAD_VERDICTS, LEADS_CAPTURED, LEADS_QUALIFIED

log = logging.getLogger("leads.handlers")
T = TypeVar("T")

# A unique index answered "already there" (a concurrent capture of the same email,
# a concurrent retry of the same behaviour): run again and see the winner's write.
_RACE_RETRIES = 3


# -- events --------------------------------------------------------------------------------


def captured_event(lead: Lead, capture: Capture, merged: bool) -> LeadCapturedV1:
    """Describes the lead after this capture; channel and campaign are this capture's touch."""
    return LeadCapturedV1(
        lead_id=lead.id,
        email=lead.email,
        name=lead.name,
        company=lead.company or "",
        source_channel=capture.source_channel,
        campaign=capture.campaign,
        consent=ConsentV1(marketing_email=lead.consent.marketing_email, captured_at=lead.consent.captured_at),
        merged=merged,
    )


def qualified_event(lead: Lead) -> LeadQualifiedV1:
    """The handoff to sales: who, why (score and reasons), from where, and consent."""
    if lead.qualified_at is None or lead.threshold is None:
        raise ValueError(f"lead {lead.id} is not qualified")
    return LeadQualifiedV1(
        lead_id=lead.id,
        contact=Contact(name=lead.name, email=lead.email),
        company=lead.company or "",
        score=lead.score,
        threshold=lead.threshold,
        score_reasons=[
            ScoreReason(behaviour=r.behaviour, count=r.count, points=r.points) for r in lead.score_reasons
        ],
        source_channel=lead.origin_channel,
        campaign=lead.campaign,
        behaviour_summary=domain.behaviour_summary(lead),
        consent=ConsentV1(marketing_email=lead.consent.marketing_email, captured_at=lead.consent.captured_at),
        qualified_at=lead.qualified_at,
    )


# -- capture ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureResult:
    lead: Lead
    merged: bool


async def capture_lead(store: Store, capture: Capture) -> CaptureResult:
    email = domain.normalize_email(capture.email)

    async def work(tx: Tx) -> CaptureResult:
        now = now_millis()
        existing = await repo.find_lead_by_email(tx, email)
        if existing is not None:
            lead = domain.merge(existing, capture, now)
            await repo.save_lead(tx, lead)
        else:
            lead = domain.new_lead(new_id(), capture, now)
            await repo.insert_lead(tx, lead)
        merged = existing is not None
        tx.emit(captured_event(lead, capture, merged), correlation_id=lead.id)
        return CaptureResult(lead, merged)

    result = await _retry_races(store, work)
    LEADS_CAPTURED.labels(str(result.merged).lower()).inc()
    return result


# -- behaviour -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BehaviourResult:
    lead: Lead
    behaviour_id: str
    duplicate: bool  # the same external_id was recorded before: nothing counted again
    counted_in_score: bool
    qualified_now: bool  # this behaviour handed the lead to sales


async def record_behaviour(
    store: Store,
    lead_id: str,
    behaviour: Behaviour,
    *,
    occurred_at: datetime | None,
    meta: Mapping[str, Any] | None,
    external_id: str | None,
    actor: Actor,
) -> BehaviourResult:
    async def work(tx: Tx) -> BehaviourResult:
        now = now_millis()
        lead = await repo.load_lead(tx, lead_id)
        if lead is None:
            raise NotFound(f"no lead '{lead_id}'", lead_id=lead_id)
        if external_id is not None:
            seen = await repo.find_behaviour_by_external_id(tx, lead_id, external_id)
            if seen is not None:
                return BehaviourResult(lead, seen["_id"], True, bool(seen.get("in_cycle")), False)
        when = to_millis(occurred_at) if occurred_at is not None else now
        rules = await repo.current_rules_tx(tx)
        outcome = domain.record_behaviour(lead, behaviour, when, rules, now)
        updated = outcome.lead
        behaviour_id = new_id()
        doc: dict[str, Any] = {
            "_id": behaviour_id,
            "lead_id": lead_id,
            "behaviour": behaviour.value,
            "occurred_at": when,
            "recorded_at": now,
            "meta": dict(meta or {}),
            "recorded_by": {"user_id": actor.user_id, "username": actor.display_name},
            "in_cycle": outcome.in_cycle,
            "score_after": updated.score,
            "rules_version": rules.version,
            "qualified": outcome.qualified,
        }
        if external_id is not None:
            doc["external_id"] = external_id
        await repo.insert_behaviour(tx, doc)
        await repo.save_lead(tx, updated)
        tx.emit(
            BehaviourRecordedV1(
                lead_id=lead_id,
                behaviour=behaviour,
                score=updated.score,
                source_channel=updated.origin_channel,
            ),
            correlation_id=lead_id,
        )
        if outcome.qualified:
            tx.emit(qualified_event(updated), correlation_id=lead_id)
        return BehaviourResult(updated, behaviour_id, False, outcome.in_cycle, outcome.qualified)

    result = await _retry_races(store, work)
    if not result.duplicate:
        BEHAVIOURS_RECORDED.labels(behaviour.value).inc()
    if result.qualified_now:
        LEADS_QUALIFIED.inc()
        log.info(
            "lead %s qualified (score %.1f >= %.1f): handed to sales",
            lead_id,
            result.lead.score,
            result.lead.threshold or 0,
            extra={"lead_id": lead_id, "handoff_count": result.lead.handoff_count},
        )
    return result


# -- scoring rules ---------------------------------------------------------------------------


async def change_rules(
    store: Store,
    rules: Mapping[Behaviour, BehaviourRule],
    threshold: float,
    *,
    actor: Actor,
    note: str | None = None,
    expected_version: int | None = None,
) -> ScoringRules:
    """Store the next version of the rules; scores change on each lead's next behaviour."""

    async def work(tx: Tx) -> ScoringRules:
        current = await repo.current_rules_tx(tx)
        if expected_version is not None and expected_version != current.version:
            raise Conflict(
                f"the rules are at version {current.version}, not {expected_version}: "
                "reload them and apply your change again",
                current_version=current.version,
                expected_version=expected_version,
            )
        try:
            new = next_version(
                current,
                rules,
                threshold,
                author=RulesAuthor(actor.user_id, actor.display_name),
                at=now_millis(),
                note=note,
            )
        except InvalidRules as exc:
            raise RuleViolation(f"invalid scoring rules: {exc}", field=exc.field) from None
        await repo.insert_rules(tx, new)
        return new

    try:
        new = await store.transaction(work)
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


async def on_lead_verdict(tx: Tx, event: LeadVerdictV1, envelope: Envelope) -> None:
    """Close marketing's loop: accepted, rejected (with reason) or recycled.

    Unknown lead -> dead letter ``unknown_lead`` (the event can never apply here).
    A lead not in 'qualified' -> recorded as ignored and logged, no state change,
    no event: a verdict only answers a handoff that is still open.
    """
    lead = await repo.load_lead(tx, event.lead_id)
    if lead is None:
        raise DeadLetter("unknown_lead", f"no lead '{event.lead_id}' in marketing's records")
    now = now_millis()
    reason = event.reason_code.value if event.reason_code is not None else None
    outcome = domain.apply_verdict(lead, event.verdict.value, reason, to_millis(envelope.occurred_at), now)
    await repo.insert_verdict(
        tx,
        {
            "_id": str(envelope.event_id),
            "lead_id": lead.id,
            "verdict": event.verdict.value,
            "reason_code": reason,
            "note": event.note,
            "decided_by": event.decided_by,
            "opportunity_id": event.opportunity_id,
            "decided_at": to_millis(envelope.occurred_at),
            "received_at": now,
            "applied": outcome.applied,
            "ignored_because": outcome.ignored_because,
            "status_before": lead.status.value,
        },
    )
    if not outcome.applied:
        log.warning(
            "verdict '%s' for lead %s ignored: %s",
            event.verdict.value,
            lead.id,
            outcome.ignored_because,
            extra={"lead_id": lead.id, "event_id": str(envelope.event_id), "outcome": "ignored"},
        )
        # Counted inside the transaction: a transient retry may count twice (rare, harmless).
        LEAD_VERDICTS.labels(event.verdict.value, "ignored").inc()
        return
    updated = outcome.lead
    await repo.save_lead(tx, updated)
    tx.emit(
        LeadStatusChangedV1(
            lead_id=updated.id,
            status=updated.status.value,
            reason_code=updated.verdict_reason_code,
            source_channel=updated.origin_channel,
        )
    )
    LEAD_VERDICTS.labels(event.verdict.value, "applied").inc()


# -- helpers ---------------------------------------------------------------------------------


async def _retry_races(store: Store, work: Callable[[Tx], Awaitable[T]]) -> T:
    for attempt in range(1, _RACE_RETRIES + 1):
        try:
            return await store.transaction(work)
        except DuplicateKeyError:
            if attempt == _RACE_RETRIES:
                raise
            log.info("unique-key race (attempt %d); running again", attempt)
    raise AssertionError("unreachable")
