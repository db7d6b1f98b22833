"""The outbox audit: a published event the broker lost is published again.

The relay marks an outbox row published once the broker acknowledged it. A broker
can lose acknowledged writes (the embedded one stopped under traffic; a Kafka
cluster with ``unclean.leader.election`` or ``min.insync.replicas=1``). Handoff
receipts make the handoff's *receiver* whole (the sender re-sends when no receipt
comes back), but every topic has other readers: analytics folds every event, and a
handoff the receiver consumed from the broker's memory, and receipted, just before
the broker lost it is gone from the log for good. Analytics' reconciliation replays
the log, so it cannot bring it back either, and its figures stay short (the
``make chaos`` runs showed it: 10 of 400 ``lead.qualified`` records missing from the
log after three broker restarts, all receipted by sales, one never seen by analytics).

So the relay records where the broker said it stored each event (partition and
offset, from the produce acknowledgement), and this audit reads the record at that
position once the publish is ``CRM_OUTBOX_AUDIT_AFTER_SECONDS`` old (by then the
embedded broker has saved it, or lost it and been restarted):

- the record there carries the row's event id: the row is marked ``audited``;
- the position is past the partition's end, or holds another record (a broker that
  lost its tail gives the lost offsets to later writes): the row is put back in the
  outbox and published again with the SAME event id (consumers' ledgers drop a
  copy; analytics' folds are idempotent), counted in
  ``crm_outbox_republished_total{service,topic}`` and logged;
- the position is below the partition's start (retention removed it): nothing to
  check, ``audited``.

A broker that cannot be read leaves the rows for the next round. Rows of other
replicas are audited too (conditional updates: one republish wins). The audit is a
bound, not a proof: a broker that loses a write later than the audit (a Kafka
follower far behind elected leader minutes after) is not seen; configure real
clusters not to lose acknowledged writes (``deploy/README.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from crm_contracts import utcnow
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from crm_platform import metrics
from crm_platform.kafka import CLIENT_START_SECONDS, make_consumer, start_client
from crm_platform.mongo import BATCH_EVENTS as _BATCH_EVENTS
from crm_platform.mongo import OUTBOX

log = logging.getLogger("crm.outbox.audit")

# Fields the relay sets on a published row (crm_platform.outbox).
LOG_PARTITION, LOG_OFFSET, AUDITED = "log_partition", "log_offset", "audited"
# A batch row's (crm_platform.mongo.outbox_rows) positions, ``[partition, offset]`` per event in order.
LOG_POSITIONS = "log_positions"
# A batch row's checks: per producer batch its events went in, the last of them, as
# ``[topic, partition, offset, event_id]``. A producer batch is stored whole or not at all, and a
# broker that loses acknowledged records loses a partition's tail, whose offsets later writes
# take again: if the batch's last record of the row is still there, so are the row's records
# before it in that batch. So the audit reads one record per producer batch, not one per event
# (a 500-lead bulk row: about 6 checks instead of 500 event ids read and judged). Rows
# published before there were checks are audited event by event.
LOG_CHECKS = "log_checks"
READ_SECONDS = 30.0  # one partition's read may take this long before the round gives up


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int


def judge(event_id: str, position: Position, found: dict[int, str | None], start: int, end: int) -> str:
    """``ok``, ``lost`` or ``expired`` for one row (pure).

    ``found`` maps the offsets read from ``position``'s partition to their records'
    event ids; ``start``/``end`` are the partition's first and next offset.
    """
    if position.offset < start:
        return "expired"
    if position.offset >= end:
        return "lost"
    return "ok" if found.get(position.offset) == event_id else "lost"


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db[OUTBOX].create_index(
        [(AUDITED, ASCENDING), ("published_at", ASCENDING)],
        name="audit_due",
        partialFilterExpression={AUDITED: False},
    )


class OutboxAudit:
    """Checks published outbox rows against the log and republishes the lost ones."""

    start_seconds: float = CLIENT_START_SECONDS  # its reader's start (CRM_KAFKA_START_SECONDS)

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        bootstrap: str,
        service: str,
        after_seconds: float,
        interval_seconds: float,
        wake_relay: Any,
        batch_size: int = 2000,
    ) -> None:
        self.db = db
        self.bootstrap = bootstrap
        self.service = service
        self.after = timedelta(seconds=after_seconds)
        self.interval = interval_seconds
        self.wake_relay = wake_relay
        self.batch_size = batch_size
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    while await self.audit_once() >= self.batch_size:
                        pass  # a backlog of rows to check: keep going
                except asyncio.CancelledError:
                    raise
                except (PyMongoError, KafkaError, TimeoutError) as exc:
                    # The database or the broker is away: expected during an outage, and
                    # the next round retries; one line, not a traceback every round.
                    log.warning("outbox audit postponed (%s: %s); retrying", type(exc).__name__, exc)
                    await self._close()
                except Exception as exc:
                    log.warning(
                        "outbox audit failed (%s: %s); retrying", type(exc).__name__, exc, exc_info=exc
                    )
                    await self._close()
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)
                except TimeoutError:
                    pass
        finally:
            await self._close()

    async def audit_once(self) -> int:
        """Audit the due rows (at most one batch); returns how many rows were looked at."""
        rows = await self._due_rows()
        if not rows:
            return 0
        # Each published event (a batch row has several) with the row it belongs to.
        by_tp: dict[TopicPartition, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            for event in published_events(row):
                by_tp[TopicPartition(event["topic"], int(event[LOG_PARTITION]))].append(event)
        lost: dict[Any, dict[str, Any]] = {}
        try:
            for tp, events in by_tp.items():
                verdicts = await self._check_partition(tp, events)
                for event, verdict in zip(events, verdicts, strict=True):
                    if verdict == "lost":
                        lost.setdefault(event["row"]["_id"], event)
        finally:
            # An assigned partition is fetched in the background for ever (on a broker that
            # answers empty fetches at once, at full CPU): hold none between rounds.
            if self._consumer is not None:
                self._consumer.unsubscribe()
        for event in lost.values():
            await self._republish(event["row"], event)  # a batch row: all of it again
        ok = [row["_id"] for row in rows if row["_id"] not in lost]
        if ok:
            await self.db[OUTBOX].update_many({"_id": {"$in": ok}}, {"$set": {AUDITED: True}})
        return len(rows)

    async def _due_rows(self) -> list[dict[str, Any]]:
        """The oldest rows due for the audit (at most a batch), with what it checks of each:
        a batch row's checks, not its events' ids (read only for a row that has no checks)."""
        due = utcnow() - self.after
        rows = await (
            self.db[OUTBOX]
            .find(
                {AUDITED: False, "published": True, "published_at": {"$lte": due}},
                {"event_id": 1, "topic": 1, LOG_PARTITION: 1, LOG_OFFSET: 1, LOG_POSITIONS: 1, LOG_CHECKS: 1},
            )
            .sort("published_at", 1)
            .limit(self.batch_size)
        ).to_list()
        unchecked = [row["_id"] for row in rows if LOG_POSITIONS in row and LOG_CHECKS not in row]
        if unchecked:
            events = {
                row["_id"]: row[_BATCH_EVENTS]
                async for row in self.db[OUTBOX].find(
                    {"_id": {"$in": unchecked}},
                    {f"{_BATCH_EVENTS}.event_id": 1, f"{_BATCH_EVENTS}.topic": 1},
                )
            }
            for row in rows:
                if row["_id"] in events:
                    row[_BATCH_EVENTS] = events[row["_id"]]
        return rows

    async def _check_partition(self, tp: TopicPartition, rows: list[dict[str, Any]]) -> list[str]:
        consumer = await self._reader()
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        wanted = {int(r[LOG_OFFSET]) for r in rows if start <= int(r[LOG_OFFSET]) < end}
        found: dict[int, str | None] = {}
        if wanted:
            consumer.seek(tp, min(wanted))
            last = max(wanted)
            deadline = asyncio.get_running_loop().time() + READ_SECONDS
            while await consumer.position(tp) <= last:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"reading {tp.topic}[{tp.partition}] up to offset {last}")
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1000)
                for record in batch.get(tp, []):
                    if record.offset in wanted:
                        found[record.offset] = _event_id(record.headers)
                if not batch and await consumer.position(tp) <= last:
                    # Nothing more to read below ``last``: a compacted or aborted gap.
                    end_now = (await consumer.end_offsets([tp]))[tp]
                    if end_now <= last:
                        break
        return [
            judge(str(r["event_id"]), Position(tp.topic, tp.partition, int(r[LOG_OFFSET])), found, start, end)
            for r in rows
        ]

    async def _republish(self, row: dict[str, Any], event: dict[str, Any]) -> None:
        """Hand ``row`` back to the relay (``event``: the one of its events found lost; a batch
        row is published again whole, its other events dropped as copies by consumers)."""
        same = {LOG_POSITIONS: row[LOG_POSITIONS]} if LOG_POSITIONS in row else {LOG_OFFSET: row[LOG_OFFSET]}
        result = await self.db[OUTBOX].update_one(
            {"_id": row["_id"], "published": True, **same},
            {
                "$set": {"published": False, "republished_at": utcnow()},
                "$unset": {
                    "published_at": "",
                    AUDITED: "",
                    LOG_PARTITION: "",
                    LOG_OFFSET: "",
                    LOG_POSITIONS: "",
                    LOG_CHECKS: "",
                },
                "$inc": {"republished": 1},
            },
        )
        if result.modified_count:
            metrics.OUTBOX_REPUBLISHED.labels(self.service, event["topic"]).inc()
            log.warning(
                "the broker lost event %s (acknowledged at %s[%s]@%s): publishing it again",
                event["event_id"],
                event["topic"],
                event[LOG_PARTITION],
                event[LOG_OFFSET],
                extra={"event_id": event["event_id"], "topic": event["topic"]},
            )
            self.wake_relay()

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = make_consumer(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.service}-outbox-audit",
                enable_auto_commit=False,
            )
            await start_client(consumer, self.start_seconds)
            self._consumer = consumer
        return self._consumer

    async def _close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await asyncio.wait_for(consumer.stop(), timeout=10)
            except Exception as exc:
                log.debug("outbox audit consumer stop failed: %s", exc, exc_info=exc)


def published_events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a published row the audit checks, with where the broker stored each
    (``row``: the row itself).

    A single row is one event at ``log_partition``/``log_offset``; a batch row's are its
    ``log_checks`` (the last of its events in each producer batch), or, published before
    those were kept, all its ``events`` items at the ``log_positions`` of the same index.
    """
    if LOG_POSITIONS not in row:
        return [{"event_id": row["event_id"], "topic": row["topic"], LOG_PARTITION: row[LOG_PARTITION],
                 LOG_OFFSET: row[LOG_OFFSET], "row": row}]  # fmt: skip
    if LOG_CHECKS in row:
        return [
            {"event_id": event_id, "topic": topic, LOG_PARTITION: p, LOG_OFFSET: o, "row": row}
            for topic, p, o, event_id in row[LOG_CHECKS]
        ]
    return [
        {"event_id": item["event_id"], "topic": item["topic"], LOG_PARTITION: p, LOG_OFFSET: o, "row": row}
        for item, (p, o) in zip(row[_BATCH_EVENTS], row[LOG_POSITIONS], strict=True)
    ]


def _event_id(headers: Any) -> str | None:
    for key, value in headers or ():
        if key == "event_id":
            return bytes(value).decode("utf-8", "replace")
    return None
