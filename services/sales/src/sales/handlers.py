"""Sales' use cases: an event or a command -> the domain -> the store + emitted events.

Every change runs in one transaction (``Store.transaction``) that may be retried:
nothing here has a side effect outside ``tx`` except logging. Events about a lead
or an opportunity carry the correlation id of the journey they belong to (the one
the ``lead.qualified`` or ``upsell.spotted`` envelope came with), so analytics can
replay a customer's history across departments.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from crm_contracts import Envelope, utcnow
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import (
    ActivityLoggedV1,
    Commitment,
    ContractTerm,
    DealWonV2,
    LeadAssignedV1,
    LeadVerdictV1,
    OpportunityCreatedV1,
    OpportunityLostV1,
    OpportunityStageChangedV1,
    Product,
    RejectReason,
    Verdict,
)
from crm_contracts.events.service_desk import CommitmentFlaggedV1, UpsellSpottedV1
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.money import plain_numbers, to_amount, to_wire
from crm_platform.mongo import Store, Tx
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError

from sales import metrics
from sales import store as repo
from sales.domain.access import Actor, require_access
from sales.domain.assignment import AssignedBy, plan_upsell_owner, round_robin
from sales.domain.inbox import (
    VERDICT_STATUS,
    InboxStatus,
    check_assign,
    check_sla_minutes,
    check_verdict,
    response_due_at,
)
from sales.domain.opportunity import (
    DEFAULT_CONTRACT_MONTHS,
    DEFAULT_CURRENCY,
    ActivityType,
    OpportunityStatus,
    Origin,
    check_activity,
    check_open_for_edit,
    merge_contacts,
    status_for_stage,
    with_commitment_ids,
)
from sales.domain.pipeline import Stage, build_pipeline, check_stage_move, removed_stages

log = logging.getLogger("crm.sales")

Doc = dict[str, Any]


def new_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> datetime:
    """Now, at MongoDB's precision (milliseconds): what an event says and what is stored agree."""
    t = utcnow()
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def as_utc(when: datetime) -> datetime:
    """Naive datetimes from clients are taken as UTC (and kept to the millisecond)."""
    t = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


async def _round_robin(tx: Tx) -> tuple[str | None, int | None]:
    """The next active rep in the rotation and the counter value that chose them."""
    active = await repo.active_rep_names(tx)
    if not active:
        return None, None
    counter = await repo.take_counter(tx)
    return round_robin(active, counter), counter


def _new_opportunity(
    *,
    origin: Origin,
    stage: str,
    owner: str,
    assigned_by: AssignedBy,
    account_name: str,
    contacts: list[Doc],
    fields: Doc,
    correlation_id: str,
    now: datetime,
    created_by: str,
    **extra: Any,
) -> Doc:
    amount = fields.get("amount")
    return {
        "_id": new_id(),
        "origin": origin.value,
        "status": OpportunityStatus.OPEN.value,
        "stage": stage,
        "owner": owner,
        "assigned_by": assigned_by.value,
        "account_name": account_name,
        "account_id": None,
        "lead_id": None,
        "inbox_item_id": None,
        "signal_id": None,
        "source_deal_id": None,
        "signal_kind": None,
        "description": None,
        "lead_source": None,
        "fields": fields,
        "amount": to_amount(amount) if amount is not None else None,
        "currency": fields.get("currency") or DEFAULT_CURRENCY,
        "contacts": contacts,
        "commitment_flags": [],
        "stage_history": [{"from_stage": None, "to_stage": stage, "at": now, "by": created_by}],
        "stage_entered_at": now,
        "activity_count": 0,
        "last_activity_at": None,
        "created_at": now,
        "updated_at": now,
        "won_at": None,
        "lost_at": None,
        "lost_reason": None,
        "correlation_id": correlation_id,
        **extra,
    }


def _created_event(opp: Doc) -> OpportunityCreatedV1:
    return OpportunityCreatedV1(
        opportunity_id=opp["_id"],
        account_name=opp["account_name"],
        owner=opp["owner"],
        stage=opp["stage"],
        origin=opp["origin"],
        lead_id=opp["lead_id"],
        signal_id=opp["signal_id"],
        amount=to_wire(opp["amount"]),
    )


# -- consumers ------------------------------------------------------------------------------


async def on_lead_qualified(tx: Tx, event: LeadQualifiedV1, envelope: Envelope) -> None:
    """A qualified lead lands in the inbox, assigned round-robin, with its response due date.

    One item per handoff event (the platform's ledger drops redeliveries). If the
    lead already waits in the inbox (marketing handed it over again before any
    verdict), that item is refreshed with the newer handoff instead of doubling it
    (same owner and due date; still unassigned, it gets the next rep if one is active).
    """
    now = now_ms()
    payload = event.to_payload()
    latest = await repo.load_latest_item(tx, event.lead_id)
    if latest is not None and _latest_handoff_at(latest) > as_utc(envelope.occurred_at):
        # A re-sent handoff (its first publish was lost) arriving after a newer handoff
        # of the same lead: the newer one already superseded it; do not resurrect it.
        await repo.update_item(
            tx, latest["_id"], latest["status"], {"$push": {"superseded_event_ids": str(envelope.event_id)}}
        )
        log.info("lead %s: handoff %s is older than the inbox's; ignored", event.lead_id, envelope.event_id)
        return
    pending = await repo.pending_item_for_lead(tx, event.lead_id)
    if pending is not None:
        await _refresh_pending(tx, pending, payload, event, envelope, now)
        return
    sla = await repo.sla_minutes(tx)
    owner, counter = await _round_robin(tx)
    due = response_due_at(now, sla)
    item: Doc = {
        "_id": str(envelope.event_id),
        "lead_id": event.lead_id,
        "status": InboxStatus.PENDING.value,
        "owner": owner,
        "assigned_by": AssignedBy.ROUND_ROBIN.value if owner else None,
        "assigned_at": now if owner else None,
        "assignment_history": [_auto_assignment(owner, counter, now)] if owner else [],
        "received_at": now,
        "handed_off_at": envelope.occurred_at,
        "response_due_at": due,
        "sla_minutes": sla,
        "handoff_number": await repo.count_items_for_lead(tx, event.lead_id) + 1,
        "handoff": payload,
        "handoff_event_ids": [str(envelope.event_id)],
        "company": event.company,
        "correlation_id": envelope.correlation_id,
        "verdict": None,
        "updated_at": now,
    }
    await repo.insert_item(tx, item)
    if owner is not None:
        tx.emit(LeadAssignedV1(lead_id=event.lead_id, owner=owner, response_due_at=due))
    else:
        log.warning(
            "no active sales rep: lead %s waits unassigned in the inbox (assign it with "
            "POST /inbox/%s/assign)",
            event.lead_id,
            event.lead_id,
            extra={"lead_id": event.lead_id, "inbox_item_id": item["_id"]},
        )


def _latest_handoff_at(item: Doc) -> datetime:
    """When the newest handoff behind an inbox item occurred (a refresh moves it on)."""
    when: datetime = item.get("last_handed_off_at") or item["handed_off_at"]
    return as_utc(when)  # stored to the millisecond: compare like with like


def _auto_assignment(owner: str, counter: int | None, now: datetime) -> Doc:
    return {
        "owner": owner,
        "by": "system",
        "how": AssignedBy.ROUND_ROBIN.value,
        "at": now,
        "counter": counter,
    }


async def _refresh_pending(
    tx: Tx, pending: Doc, payload: Doc, event: LeadQualifiedV1, envelope: Envelope, now: datetime
) -> None:
    sets: Doc = {
        "handoff": payload,
        "company": event.company,
        "updated_at": now,
        "last_handed_off_at": envelope.occurred_at,
    }
    pushes: Doc = {"handoff_event_ids": str(envelope.event_id)}
    owner = None
    if pending["owner"] is None:
        owner, counter = await _round_robin(tx)
        if owner is not None:
            sets.update(owner=owner, assigned_by=AssignedBy.ROUND_ROBIN.value, assigned_at=now)
            pushes["assignment_history"] = _auto_assignment(owner, counter, now)
    await repo.update_item(tx, pending["_id"], InboxStatus.PENDING.value, {"$set": sets, "$push": pushes})
    if owner is not None:
        tx.emit(
            LeadAssignedV1(lead_id=event.lead_id, owner=owner, response_due_at=pending["response_due_at"])
        )
    log.info("lead %s handed off again while pending: inbox item %s refreshed", event.lead_id, pending["_id"])


async def on_upsell_spotted(tx: Tx, event: UpsellSpottedV1, envelope: Envelope) -> None:
    """A new opportunity for the account's sales owner (if active; else round-robin)."""
    if await repo.opportunity_for_signal(tx, event.signal_id) is not None:
        log.info("upsell signal %s already has an opportunity", event.signal_id)
        return
    active = await repo.active_rep_names(tx)
    plan = plan_upsell_owner(event.sales_owner, active)
    owner, counter = plan.owner, None
    if plan.uses_counter:
        counter = await repo.take_counter(tx)
        owner = round_robin(active, counter)
    assert owner is not None  # plan_upsell_owner always names one without the counter
    if owner not in active:
        log.warning(
            "no active sales rep: upsell signal %s stays with the account owner %s",
            event.signal_id,
            owner,
            extra={"signal_id": event.signal_id},
        )
    pipeline = await repo.load_pipeline(tx)
    source = await repo.load_opportunity(tx, event.deal_id)
    now = now_ms()
    fields: Doc = {} if event.estimated_value is None else {"amount": to_amount(event.estimated_value)}
    opp = _new_opportunity(
        origin=Origin.UPSELL,
        stage=pipeline.first.name,
        owner=owner,
        assigned_by=plan.how,
        account_name=event.account_name,
        contacts=list(source["contacts"]) if source else [],
        fields=fields,
        correlation_id=envelope.correlation_id,
        now=now,
        created_by=f"service-desk:{event.spotted_by}",
        account_id=event.account_id,
        signal_id=event.signal_id,
        source_deal_id=event.deal_id,
        signal_kind=event.kind.value,
        description=event.description,
        assignment_counter=counter,
    )
    await repo.insert_opportunity(tx, opp)
    tx.emit(_created_event(opp))


async def on_commitment_flagged(tx: Tx, event: CommitmentFlaggedV1, envelope: Envelope) -> None:
    """Customer success says a promise cannot be kept: record it on the won deal."""
    opp = await repo.load_opportunity(tx, event.deal_id)
    if opp is None or opp["status"] != OpportunityStatus.WON.value:
        raise DeadLetter("unknown_deal", f"sales has no won deal {event.deal_id!r}")
    if any(f["flag_id"] == event.flag_id for f in opp.get("commitment_flags", [])):
        log.info("commitment flag %s already recorded", event.flag_id)
        return
    known = event.commitment_id in {c.get("commitment_id") for c in opp["fields"].get("commitments", [])}
    if not known:
        log.warning(
            "flag %s names commitment %s, not one of deal %s's",
            event.flag_id,
            event.commitment_id,
            event.deal_id,
        )
    now = now_ms()
    await repo.update_opportunity(
        tx,
        opp["_id"],
        {
            "$push": {
                "commitment_flags": {
                    "flag_id": event.flag_id,
                    "commitment_id": event.commitment_id,
                    "commitment_known": known,
                    "account_id": event.account_id,
                    "reason": event.reason,
                    "flagged_by": event.flagged_by,
                    "flagged_at": envelope.occurred_at,
                    "received_at": now,
                }
            },
            "$set": {"updated_at": now},
        },
    )


# -- rep roster, config, pipeline -------------------------------------------------------------


async def replace_roster(store: Store, reps: Sequence[tuple[str, str | None, bool]], actor: Actor) -> None:
    """Reps are keyed by user id (the token's ``sub``); ``name`` is display only."""
    now = now_ms()
    docs = [
        {"_id": u, "name": n, "active": a, "updated_at": now, "updated_by": actor.user_id} for u, n, a in reps
    ]

    async def work(tx: Tx) -> None:
        await repo.replace_reps(tx, docs)

    await store.transaction(work)


async def set_rep(store: Store, user_id: str, name: str | None, active: bool, actor: Actor) -> Doc:
    doc = {
        "_id": user_id,
        "name": name,
        "active": active,
        "updated_at": now_ms(),
        "updated_by": actor.user_id,
    }

    async def work(tx: Tx) -> Doc:
        return await repo.upsert_rep(tx, doc)

    return await store.transaction(work)


async def set_sla(store: Store, minutes: int, actor: Actor) -> None:
    check_sla_minutes(minutes)

    async def work(tx: Tx) -> None:
        await repo.save_config(tx, minutes, actor.user_id, now_ms())

    await store.transaction(work)


async def replace_pipeline(store: Store, stages: Sequence[Stage], actor: Actor) -> None:
    """A new pipeline version; a stage that still holds opportunities cannot be removed."""

    async def work(tx: Tx) -> None:
        current = await repo.load_pipeline(tx)
        proposed = build_pipeline(stages, current.version + 1)
        gone = removed_stages(current, proposed)
        if gone:
            held = await repo.count_in_stages(tx, gone)
            if held:
                raise Conflict(
                    "a stage that still holds opportunities cannot be removed: move them first",
                    stages=held,
                )
        await repo.save_pipeline(tx, proposed, actor.user_id, now_ms())

    await store.transaction(work)


# -- inbox ------------------------------------------------------------------------------------


async def _load_item(tx: Tx, lead_id: str) -> Doc:
    item = await repo.load_latest_item(tx, lead_id)
    if item is None:
        raise NotFound(f"lead {lead_id!r} is not in the sales inbox", lead_id=lead_id)
    return item


async def assign(store: Store, lead_id: str, owner: str | None, actor: Actor) -> Doc:
    """A manager (re)assigns a pending item: to the rep named, or the next in the rotation."""

    async def work(tx: Tx) -> Doc:
        item = await _load_item(tx, lead_id)
        check_assign(InboxStatus(item["status"]))
        active = await repo.active_rep_names(tx)
        how = AssignedBy.MANAGER if owner is not None else AssignedBy.ROUND_ROBIN
        if owner is not None and owner not in active:
            raise RuleViolation(
                f"{owner!r} is not an active rep in the sales roster", owner=owner, active=sorted(active)
            )
        if not active:
            raise RuleViolation("no active rep in the sales roster to assign to (PUT /reps)")
        counter = None if owner is not None else await repo.take_counter(tx)
        chosen = owner if counter is None else round_robin(active, counter)
        assert chosen is not None  # the roster has an active rep
        if chosen == item["owner"]:
            return item
        now = now_ms()
        updated = await repo.update_item(
            tx,
            item["_id"],
            InboxStatus.PENDING.value,
            {
                "$set": {"owner": chosen, "assigned_by": how.value, "assigned_at": now, "updated_at": now},
                "$push": {
                    "assignment_history": {
                        "owner": chosen,
                        "by": actor.user_id,
                        "how": how.value,
                        "at": now,
                        "counter": counter,
                    }
                },
            },
        )
        tx.emit(
            LeadAssignedV1(lead_id=lead_id, owner=chosen, response_due_at=item["response_due_at"]),
            correlation_id=item["correlation_id"],
        )
        return updated

    return await store.transaction(work)


@dataclass(frozen=True)
class VerdictResult:
    item: Doc
    opportunity: Doc | None


async def decide(
    store: Store,
    lead_id: str,
    verdict: Verdict,
    actor: Actor,
    *,
    reason_code: RejectReason | None = None,
    note: str | None = None,
) -> VerdictResult:
    """The verdict on the lead's current inbox item; accepting opens an opportunity."""
    if verdict == Verdict.REJECTED and reason_code is None:
        raise RuleViolation("a rejection needs a reason code", reasons=[r.value for r in RejectReason])

    async def work(tx: Tx) -> VerdictResult:
        item = await _load_item(tx, lead_id)
        check_verdict(InboxStatus(item["status"]), item["owner"], actor)
        now = now_ms()
        corr = item["correlation_id"]
        opp: Doc | None = None
        if verdict == Verdict.ACCEPTED:
            handoff = LeadQualifiedV1.model_validate(item["handoff"])
            pipeline = await repo.load_pipeline(tx)
            opp = _new_opportunity(
                origin=Origin.LEAD,
                stage=pipeline.first.name,
                owner=item["owner"] or actor.user_id,
                assigned_by=AssignedBy(item["assigned_by"]) if item["owner"] else AssignedBy.MANAGER,
                account_name=handoff.company,
                contacts=[handoff.contact.model_dump(mode="json")],
                fields={},
                correlation_id=corr,
                now=now,
                created_by=actor.user_id,
                lead_id=lead_id,
                inbox_item_id=item["_id"],
                lead_source={
                    "source_channel": handoff.source_channel,
                    "campaign": handoff.campaign,
                    "score": handoff.score,
                },
            )
            await repo.insert_opportunity(tx, opp)
            tx.emit(_created_event(opp), correlation_id=corr)
        record = {
            "verdict": verdict.value,
            "reason_code": reason_code.value if reason_code else None,
            "note": note,
            "decided_by": actor.user_id,
            "decided_at": now,
            "opportunity_id": opp["_id"] if opp else None,
        }
        updated = await repo.update_item(
            tx,
            item["_id"],
            InboxStatus.PENDING.value,
            {
                "$set": {"status": VERDICT_STATUS[verdict].value, "verdict": record, "updated_at": now},
            },
        )
        tx.emit(
            LeadVerdictV1(
                lead_id=lead_id,
                verdict=verdict,
                reason_code=reason_code,
                note=note,
                decided_by=actor.user_id,
                opportunity_id=record["opportunity_id"],
            ),
            correlation_id=corr,
        )
        return VerdictResult(updated, opp)

    try:
        result = await store.transaction(work)
    except DuplicateKeyError:
        # A concurrent acceptance of the same item opened its opportunity first.
        raise Conflict("this lead already has a verdict (given concurrently)") from None
    decided_at: datetime = result.item["verdict"]["decided_at"]
    within = decided_at <= result.item["response_due_at"]
    metrics.LEAD_VERDICTS.labels(verdict.value, str(within).lower()).inc()
    metrics.LEAD_RESPONSE_SECONDS.labels(verdict.value).observe(
        max(0.0, (decided_at - result.item["received_at"]).total_seconds())
    )
    return result


# -- opportunities ----------------------------------------------------------------------------


async def _load_opportunity(tx: Tx, opp_id: str, actor: Actor) -> Doc:
    opp = await repo.load_opportunity(tx, opp_id)
    if opp is None:
        raise NotFound(f"no opportunity {opp_id!r}", opportunity_id=opp_id)
    require_access(actor, opp["owner"], "opportunity")
    return opp


def _prepare_fields(fields: Mapping[str, Any]) -> Doc:
    out = dict(fields)
    if "commitments" in out:
        out["commitments"] = with_commitment_ids(out["commitments"], new_id)
    return out


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


def _deal_won(opp: Doc, fields: Mapping[str, Any], contacts: list[Doc], now: datetime) -> DealWonV2:
    """The handoff to customer success, validated against its contract before anything is stored.

    v2 carries the contract term: ``contract_start`` (a date; default the win) and
    ``contract_months`` (default 12), valued at the deal's amount."""
    try:
        value = Money(
            amount=to_wire(to_amount(fields["amount"])), currency=fields.get("currency") or DEFAULT_CURRENCY
        )
        start = fields.get("contract_start")
        term = ContractTerm.starting(
            datetime.fromisoformat(f"{start}T00:00:00+00:00") if start else now,
            int(fields.get("contract_months") or DEFAULT_CONTRACT_MONTHS),
            value,
        )
        return DealWonV2(
            deal_id=opp["_id"],
            lead_id=opp.get("lead_id"),
            account_name=opp["account_name"],
            contacts=[Contact.model_validate(c) for c in contacts],
            products=[Product.model_validate(plain_numbers(p)) for p in fields["products"]],
            value=value,
            commitments=[Commitment.model_validate(c) for c in fields["commitments"]],
            sales_owner=opp["owner"],
            won_at=now,
            term=term,
        )
    except (ValidationError, TypeError, KeyError) as exc:
        errors = _field_errors(exc) if isinstance(exc, ValidationError) else [{"message": str(exc)}]
        raise RuleViolation("the won deal does not make a valid deal.won handoff", errors=errors) from None


async def move_stage(
    store: Store,
    opp_id: str,
    target: str,
    fields: Mapping[str, Any],
    contacts: Sequence[Mapping[str, Any]],
    actor: Actor,
) -> Doc:
    async def work(tx: Tx) -> Doc:
        opp = await _load_opportunity(tx, opp_id, actor)
        pipeline = await repo.load_pipeline(tx)
        merged = check_stage_move(pipeline, opp["stage"], target, opp["fields"], _prepare_fields(fields))
        now = now_ms()
        contacts_after = merge_contacts(opp["contacts"], contacts)
        status = status_for_stage(target)
        deal = _deal_won(opp, merged, contacts_after, now) if status == OpportunityStatus.WON else None
        amount = merged.get("amount")
        changes: Doc = {
            "stage": target,
            "status": status.value,
            "fields": merged,
            "amount": to_amount(amount) if amount is not None else None,
            "currency": merged.get("currency") or DEFAULT_CURRENCY,
            "contacts": contacts_after,
            "stage_entered_at": now,
            "updated_at": now,
        }
        if status == OpportunityStatus.WON:
            changes["won_at"] = now
        elif status == OpportunityStatus.LOST:
            changes["lost_at"] = now
            changes["lost_reason"] = merged["lost_reason"]
        updated = await repo.update_opportunity(
            tx,
            opp_id,
            {
                "$set": changes,
                "$push": {
                    "stage_history": {
                        "from_stage": opp["stage"],
                        "to_stage": target,
                        "at": now,
                        "by": actor.user_id,
                    }
                },
            },
        )
        corr = opp["correlation_id"]
        tx.emit(
            OpportunityStageChangedV1(
                opportunity_id=opp_id,
                from_stage=opp["stage"],
                to_stage=target,
                owner=opp["owner"],
                amount=to_wire(changes["amount"]),
            ),
            correlation_id=corr,
        )
        if deal is not None:
            tx.emit(deal, correlation_id=corr)
        if status == OpportunityStatus.LOST:
            tx.emit(
                OpportunityLostV1(opportunity_id=opp_id, reason=merged["lost_reason"], owner=opp["owner"]),
                correlation_id=corr,
            )
        return updated

    result = await store.transaction(work)
    metrics.STAGE_MOVES.labels(target).inc()
    return result


async def update_fields(
    store: Store,
    opp_id: str,
    fields: Mapping[str, Any],
    contacts: Sequence[Mapping[str, Any]],
    actor: Actor,
) -> Doc:
    """Set fields (and add contacts) on an open opportunity without moving it."""

    async def work(tx: Tx) -> Doc:
        opp = await _load_opportunity(tx, opp_id, actor)
        check_open_for_edit(OpportunityStatus(opp["status"]))
        merged = {**opp["fields"], **_prepare_fields(fields)}
        amount = merged.get("amount")
        return await repo.update_opportunity(
            tx,
            opp_id,
            {
                "$set": {
                    "fields": merged,
                    "amount": to_amount(amount) if amount is not None else None,
                    "currency": merged.get("currency") or DEFAULT_CURRENCY,
                    "contacts": merge_contacts(opp["contacts"], contacts),
                    "updated_at": now_ms(),
                }
            },
        )

    return await store.transaction(work)


async def log_activity(
    store: Store,
    opp_id: str,
    activity_type: ActivityType,
    summary: str,
    actor: Actor,
    *,
    occurred_at: datetime | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
) -> Doc:
    now = now_ms()
    when = as_utc(occurred_at) if occurred_at is not None else now
    check_activity(activity_type, amount, when, now)

    async def work(tx: Tx) -> Doc:
        opp = await _load_opportunity(tx, opp_id, actor)
        activity: Doc = {
            "_id": new_id(),
            "opportunity_id": opp_id,
            "type": activity_type.value,
            "summary": summary,
            "occurred_at": when,
            "logged_at": now,
            "logged_by": actor.user_id,
            "amount": amount,
            "currency": (currency or opp.get("currency") or DEFAULT_CURRENCY) if amount is not None else None,
        }
        await repo.insert_activity(tx, activity)
        await repo.update_opportunity(
            tx,
            opp_id,
            {
                "$inc": {"activity_count": 1},
                "$max": {"last_activity_at": when},
                "$set": {"updated_at": now},
            },
        )
        tx.emit(
            ActivityLoggedV1(
                opportunity_id=opp_id,
                activity_id=activity["_id"],
                activity_type=activity_type.value,
                owner=opp["owner"],
            ),
            correlation_id=opp["correlation_id"],
        )
        return activity

    return await store.transaction(work)
