"""A batch of ``sales.lead_assigned`` events stored together (group commit, issue 12), against
the real mongod: the leads of the whole batch are read with one query and each save costs no
second read, with exactly the effects and audit entries of one by one (a reassignment later
in the batch wins, a stale copy changes nothing). The records are handed to marketing's own
consumer handlers as one fetch would hand them (the Kafka side is a stand-in)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.sales import LeadAssignedV1, LeadVerdictV1
from crm_contracts.topics import SALES_EVENTS
from crm_platform import audit
from crm_platform.consumer import ConsumerConfig, EventConsumer, Outcome
from leads import consumers
from leads import store as repo

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads
TP = TopicPartition(SALES_EVENTS, 0)


class StandInKafka:
    def __init__(self) -> None:
        self.dead_letters: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.dead_letters.append(value)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


class Recording(EventConsumer):
    outcomes: dict[int, str]
    kafka: StandInKafka

    async def on_outcome(self, record: Any, outcome: Outcome) -> None:
        self.outcomes[record.offset] = outcome.outcome


def _assignment(lead_id: str, rep: str, at: datetime) -> Envelope:
    event = LeadAssignedV1(lead_id=lead_id, owner=rep, response_due_at=at + timedelta(hours=4))
    return envelope_for(event, source="sales", correlation_id=f"journey-{lead_id}", occurred_at=at)


def _recording(leads: Leads, group_id: str) -> Recording:
    """Marketing's consumer handlers, fed records directly (the Kafka side a stand-in)."""
    consumer = Recording(
        ConsumerConfig(service="leads", group_id=group_id, topics=[SALES_EVENTS], bootstrap="-"),
        leads.runtime.store,
        consumers.subscription(leads.app.state.uow).handlers,
    )
    consumer.outcomes = {}
    consumer.kafka = StandInKafka()
    consumer.consumer = consumer.producer = consumer.kafka
    return consumer


def _record(offset: int, env: Envelope) -> ConsumerRecord[bytes, bytes]:
    value = env.to_bytes()
    return ConsumerRecord(SALES_EVENTS, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


async def test_a_batch_of_assignments_reads_its_leads_once_and_audits_each_change(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = f"batch{uuid.uuid4().hex[:8]}"
    ids = [(await leads.capture(company=f"Firm {tag}", source_channel=tag))["lead"]["id"] for _ in range(5)]
    rhea, rory = f"rhea-{tag}", f"rory-{tag}"
    at = utcnow() - timedelta(minutes=10)
    envs = [_assignment(lead_id, rhea, at) for lead_id in ids]
    envs.append(_assignment(ids[0], rory, at + timedelta(minutes=5)))  # reassigned later in the batch
    envs.append(_assignment(ids[1], rory, at - timedelta(minutes=5)))  # a stale copy: changes nothing
    consumer = _recording(leads, "leads-batch-test")
    db = leads.runtime.db
    writes = _count_lead_writes(monkeypatch)

    await db.command({"profile": 2})
    try:
        await consumer._handle_partition(TP, [_record(i, e) for i, e in enumerate(envs)], {})
    finally:
        await db.command({"profile": 0})
    reads = await _reads_of(db, ids, {"command.txnNumber": {"$exists": True}})
    await db["system.profile"].drop()

    assert consumer.outcomes == dict.fromkeys(range(7), "processed")
    assert consumer.kafka.dead_letters == []
    assert reads == 1, "the leads of the whole batch in one query, no read per save"
    # One write per event before; now the batch's saves go together, the reassigned lead's
    # first save ahead of its second (each an audit entry of its own, as one by one).
    assert writes == {"bulk_write": 2}, "the batch's saves in one bulk_write, one more for a lead saved twice"
    reps = {d["_id"]: d.get("assigned_rep") async for d in db[repo.LEADS].find({"_id": {"$in": ids}})}
    assert reps == {ids[0]: rory, **{lead_id: rhea for lead_id in ids[1:]}}
    stored = await db["audit_log"].find({"record.id": {"$in": ids}, "action": "update"}).to_list()
    # One entry per bulk_write (the batch's five assignments, then the reassignment alone), not
    # one per assigned lead: an audit document and its index entries per handoff (thirteenth
    # session, handoff).
    assert len(stored) == 2, "one audit entry per bulk_write of the batch's saves"
    for lead_id in ids:
        entries = [e for d in stored for e in audit.entries_of(d, lead_id) if e["record"]["id"] == lead_id]
        changes = [
            (c["before"], c["after"]) for e in entries for c in e["changes"] if c["field"] == "assigned_rep"
        ]
        expected = [(None, rhea), (rhea, rory)] if lead_id == ids[0] else [(None, rhea)]
        assert sorted(changes, key=str) == sorted(expected, key=str), lead_id
        # Each change names the event that made it (its journey), as its own entry did.
        assert {e["correlation_id"] for e in entries} == {f"journey-{lead_id}"}, lead_id
        assert {e["actor"]["type"] for e in entries} == {"event"}, lead_id


async def _reads_of(db: Any, ids: list[str], match: dict[str, Any] | None = None) -> int:
    """The profiled queries of ``leads`` that name one of ``ids`` (this test's leads).

    Not every query of the collection: the module's running leads service consumes the shared
    broker meanwhile, and another suite's events (a lead it does not know, dead-lettered) cost
    it a query of ``leads`` too; counted, they failed these tests whenever a suite ran beside."""
    ns = {"op": "query", "ns": f"{db.name}.{repo.LEADS}", **(match or {})}
    return len(
        [op async for op in db["system.profile"].find(ns) if any(i in str(op["command"]) for i in ids)]
    )


def _count_lead_writes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The writes of marketing's ``leads`` collection, by method, from now on."""
    writes: Counter[str] = Counter()
    for name in ("replace_one", "update_one", "bulk_write"):
        real = getattr(audit.AuditedCollection, name)

        def counted(
            self: audit.AuditedCollection, *args: Any, _name: str = name, _real: Any = real, **kw: Any
        ) -> Any:
            if self.name == repo.LEADS:
                writes[_name] += 1
            return _real(self, *args, **kw)

        monkeypatch.setattr(audit.AuditedCollection, name, counted)
    return writes


async def test_an_assignment_writes_its_two_fields_not_the_whole_lead(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each assignment's save sets the lead's ``assigned_rep`` and ``assigned_at`` only, and
    adds the rep's book to the lead's lists (``list_keys``; the whole lead, about 30 fields, was
    replaced: encoded, sent and written to the oplog whole), reads nothing back for its audit
    entry, and the lead and its history are as before."""
    tag = f"set{uuid.uuid4().hex[:8]}"
    ids = [(await leads.capture(company=f"Firm {tag}"))["lead"]["id"] for _ in range(3)]
    rep, at = f"rhea-{tag}", utcnow() - timedelta(minutes=3)
    consumer = _recording(leads, "leads-set-test")
    before = {d["_id"]: d async for d in leads.runtime.db[repo.LEADS].find({"_id": {"$in": ids}})}
    sent: list[Any] = []
    real = audit.AuditedCollection.bulk_write

    async def spy(self: audit.AuditedCollection, requests: Any, *args: Any, **kw: Any) -> Any:
        if self.name == repo.LEADS:
            sent.extend(requests)
        return await real(self, requests, *args, **kw)

    monkeypatch.setattr(audit.AuditedCollection, "bulk_write", spy)
    db = leads.runtime.db
    await db.command({"profile": 2})
    try:
        records = [_record(i, _assignment(lead_id, rep, at)) for i, lead_id in enumerate(ids)]
        await consumer._handle_partition(TP, records, {})
    finally:
        await db.command({"profile": 0})
    reads = await _reads_of(db, ids)
    await db["system.profile"].drop()

    assert consumer.outcomes == dict.fromkeys(range(3), "processed")
    assert [(type(op).__name__, sorted(op._doc["$set"])) for op in sent] == [
        ("UpdateOne", ["assigned_at", "assigned_rep", repo.LIST_KEYS])
    ] * 3, "three fields set, not the whole lead replaced"
    assert reads == 1, "the batch's one read of its leads; nothing read back for the audit"
    for lead_id in ids:
        stored = await db[repo.LEADS].find_one({"_id": lead_id})
        assert stored is not None
        assigned = ("assigned_rep", "assigned_at", repo.LIST_KEYS)
        assert {k: v for k, v in stored.items() if k not in assigned} == {
            k: v for k, v in before[lead_id].items() if k not in assigned
        }
        assert stored["assigned_rep"] == rep
        assert stored[repo.LIST_KEYS] == ["status:new", f"rep:{rep}"], "in the rep's book from now on"
        [stored_entry] = await db["audit_log"].find({"record.id": lead_id, "action": "update"}).to_list()
        [entry] = audit.entries_of(stored_entry, lead_id)  # the batch's one entry, this lead's part
        assert sorted((c["field"], c["before"]) for c in entry["changes"]) == [
            ("assigned_at", None),
            ("assigned_rep", None),
        ], "the rep, not the index key derived from it (audit.derived_field)"


async def test_an_assignment_keeps_no_ledger_entry_and_its_repeat_changes_nothing(leads: Leads) -> None:
    """``sales.lead_assigned`` is handled without a processed-events ledger entry (its handler
    is idempotent by the stored assignment's time, ``Lead.assign``): a batch of assignments and
    a lone one insert nothing into the ledger and ask it nothing (an insert and its index entry
    per handoff, and a query per batch, before), and the same records delivered again (a
    redelivery after a crash before the offsets' commit) change no lead and write no second
    audit entry. The verdicts on the same topic keep theirs (a handoff's repeat re-publishes
    its receipt), and a handoff cannot be configured without one."""
    sub = consumers.subscription(leads.app.state.uow)
    assert leads.runtime.consumer is not None
    assert leads.runtime.consumer.config.unledgered == {LeadAssignedV1.event_type}, "the runtime wires it"
    tag = f"led{uuid.uuid4().hex[:8]}"
    ids = [(await leads.capture(company=f"Firm {tag}"))["lead"]["id"] for _ in range(4)]
    rep, at = f"rhea-{tag}", utcnow() - timedelta(minutes=3)
    kafka = StandInKafka()
    consumer = Recording(
        ConsumerConfig(
            service="leads",
            group_id="leads-ledger-test",
            topics=[SALES_EVENTS],
            bootstrap="-",
            unledgered=sub.unledgered,
        ),
        leads.runtime.store,
        sub.handlers,
    )
    consumer.outcomes = {}
    consumer.consumer = consumer.producer = kafka
    db = leads.runtime.db
    envs = [_assignment(lead_id, rep, at) for lead_id in ids]
    batch = [_record(i, e) for i, e in enumerate(envs[:3])]
    lone = [_record(3, envs[3])]

    await db.command({"profile": 2})
    try:
        await consumer._handle_partition(TP, batch, {})
        await consumer._handle_partition(TP, lone, {})  # one record: its own transaction
    finally:
        await db.command({"profile": 0})
    ledger_ops = await db["system.profile"].count_documents({"ns": f"{db.name}.processed_events"})
    await db["system.profile"].drop()
    event_ids = [str(e.event_id) for e in envs]
    assert consumer.outcomes == dict.fromkeys(range(4), "processed")
    assert await db["processed_events"].count_documents({"_id": {"$in": event_ids}}) == 0
    assert ledger_ops == 0, "no ledger insert, and no lookup of a batch whose events keep none"
    after_first = {d["_id"]: d async for d in db[repo.LEADS].find({"_id": {"$in": ids}})}
    assert {d["assigned_rep"] for d in after_first.values()} == {rep}
    entries = await db["audit_log"].count_documents({"record.id": {"$in": ids}, "action": "update"})
    assert entries == 2, "the batch's entry and the lone assignment's"

    consumer.outcomes = {}
    await consumer._handle_partition(TP, batch, {})  # delivered again
    await consumer._handle_partition(TP, lone, {})
    assert consumer.outcomes == dict.fromkeys(range(4), "processed")
    assert kafka.dead_letters == []
    assert {d["_id"]: d async for d in db[repo.LEADS].find({"_id": {"$in": ids}})} == after_first
    assert await db["audit_log"].count_documents({"record.id": {"$in": ids}, "action": "update"}) == entries
    assert await db["processed_events"].count_documents({"_id": {"$in": event_ids}}) == 0

    assert LeadVerdictV1.event_type not in sub.unledgered, "a verdict is a handoff: it keeps its entry"
    with pytest.raises(ValueError, match="ledger"):
        EventConsumer(
            ConsumerConfig(
                service="leads",
                group_id="leads-ledger-test",
                topics=[SALES_EVENTS],
                bootstrap="-",
                unledgered=frozenset({LeadVerdictV1.event_type}),
            ),
            leads.runtime.store,
            sub.handlers,
        )


async def test_a_lone_assignment_of_a_qualified_lead_is_one_write_without_a_read(leads: Leads) -> None:
    """The usual assignment, a lead sales was just handed, alone in its transaction: ONE
    conditioned write (``findAndModify`` on the stored assignment's time), no read of the lead
    before it nor after it for the audit entry (a read and a write per handoff before). Its
    effects and history as before: the rep and the rep's book, an audit entry naming the two
    fields; a stale copy changes nothing and a later reassignment replaces it."""
    tag = f"one{uuid.uuid4().hex[:8]}"
    lead_id = (await leads.capture(company=f"Firm {tag}"))["lead"]["id"]
    await leads.behave(lead_id, "form_submit", "trial_signup")
    assert (await leads.lead(lead_id))["status"] == "qualified"
    consumer = _recording(leads, "leads-one-test")
    db = leads.runtime.db
    rep, at = f"rhea-{tag}", utcnow() - timedelta(minutes=3)
    await db["system.profile"].drop()
    await db.command({"profile": 2})
    try:
        await consumer._handle_partition(TP, [_record(0, _assignment(lead_id, rep, at))], {})
    finally:
        await db.command({"profile": 0})
    mine = {"ns": f"{db.name}.{repo.LEADS}", "command.lsid": {"$exists": True}}
    ops = [p async for p in db["system.profile"].find(mine) if lead_id in str(p["command"])]
    await db["system.profile"].drop()
    assert consumer.outcomes == {0: "processed"}
    assert [(p["op"], next(iter(p["command"]))) for p in ops] == [("command", "findAndModify")]
    stored = await db[repo.LEADS].find_one({"_id": lead_id})
    assert stored is not None
    assert (stored["assigned_rep"], stored[repo.LIST_KEYS]) == (rep, ["status:qualified", f"rep:{rep}"])
    [entry] = (
        await db["audit_log"]
        .find({"record.id": lead_id, "action": "update", "changes.field": "assigned_rep"})
        .to_list()
    )
    assert sorted((c["field"], c["before"], c["after"]) for c in entry["changes"]) == [
        ("assigned_at", None, stored["assigned_at"]),
        ("assigned_rep", None, rep),
    ]
    stale = _record(1, _assignment(lead_id, "someone-earlier", at - timedelta(minutes=1)))
    later = _record(2, _assignment(lead_id, f"{rep}-2", at + timedelta(minutes=1)))
    await consumer._handle_partition(TP, [stale], {})
    assert (await db[repo.LEADS].find_one({"_id": lead_id}) or {})["assigned_rep"] == rep, "stale: unchanged"
    await consumer._handle_partition(TP, [later], {})
    assert (await db[repo.LEADS].find_one({"_id": lead_id}) or {})["assigned_rep"] == f"{rep}-2"
    entries = await db["audit_log"].count_documents({"record.id": lead_id, "changes.field": "assigned_rep"})
    assert entries == 2, "the first and the reassignment; the stale copy wrote none"
