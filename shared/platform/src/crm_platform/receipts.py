"""Handoff receipts as an end-to-end guarantee, on the sender's side.

The outbox makes "stored, therefore published" hold; it cannot make "published,
therefore received" hold when the broker loses an acknowledged write (an
emulator stopped under traffic, a cluster with ``unclean.leader.election`` or
``min.insync.replicas=1``): the outbox row says published and nobody notices.
The receiver already stores a ``handoff.received`` receipt in the same
transaction as the handoff's effect; this module closes the loop:

1. **Track.** The outbox relay records every handoff a service publishes in
   ``handoffs_sent``, ``state: pending``, once the broker acknowledged it and before it marks
   its row published (a crash between leaves the row pending: published and recorded again).
   Until then the outbox row is what guarantees the handoff goes out.
2. **Receipt.** :class:`HandoffTracker` consumes ``crm.platform.handoff-receipts``
   in its own group (``<group>.handoff-receipts``), keeps the receipts whose
   ``from_department`` is this service's department and marks those handoffs
   ``receipted``. Marking is idempotent, so the listener needs no ledger.
3. **Re-send.** A timer looks at pending handoffs whose check is due. One still in
   the outbox backlog is not lost (the relay will publish it). One published
   ``CRM_HANDOFF_RESEND_AFTER_SECONDS`` ago (doubling after each re-send, at most
   ``CRM_HANDOFF_RESEND_MAX_BACKOFF_SECONDS``) without a receipt, and overtaken (a
   handoff of its kind that occurred that much later is receipted: the receiver
   works and is past it) or published ``CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS``
   ago (a lone handoff, or a receiver silent that long), is put back in the
   outbox as pending: the relay publishes it again with the SAME event id. A
   receiver that is merely down or catching up gets no copies to wade through. After
   ``CRM_HANDOFF_RESEND_MAX_ATTEMPTS`` re-sends it is given up (``resend_exhausted``)
   and alerted on; a late receipt still marks it receipted.
4. **Confirm duplicates.** A receiver whose ledger drops a re-sent handoff (it did
   arrive; the receipt was what got lost) publishes that handoff's receipt again
   (:func:`confirm_again`), so the sender stops re-sending.

Each check runs in a transaction, so replicas of one service never re-send one
handoff twice for one timeout. Metrics: ``crm_handoff_resent_total``,
``crm_handoffs_unreceipted``, ``crm_handoff_unreceipted_oldest_seconds``,
``crm_handoffs_resend_exhausted`` (see :mod:`crm_platform.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pydantic_core
from crm_contracts import Envelope, utcnow
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.handoffs import HANDOFF_BY_EVENT_TYPE
from crm_contracts.topics import HANDOFF_RECEIPTS
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from crm_platform import metrics
from crm_platform.kafka import (
    PATIENT_IDLE_PAUSE_SECONDS,
    be_patient,
    make_consumer,
    pace_records,
    start_client,
    stop_client,
    wait_for_records_ms,
)
from crm_platform.liveness import PartitionTracker
from crm_platform.mongo import (
    BATCH_EVENTS,
    HANDOFFS_SENT,
    OUTBOX,
    PROCESSED,
    ROW_KEY,
    Store,
    Tx,
    drop_retired_indexes,
)
from crm_platform.settings import ServiceSettings

log = logging.getLogger("crm.receipts")

PENDING, RECEIPTED, GAVE_UP = "pending", "receipted", "gave_up"
RECEIPT_EVENT = HandoffReceivedV1.event_type
# The receipt listener's wait for receipts at most (``getmany``): it returns with the first
# receipts and is cancelled on a stop, so the timeout only bounds how late aiokafka's coordination
# errors are raised; at 500 ms it was two wake-ups a second in each department.
RECEIPTS_WAIT_SECONDS = 2.0
# A received handoff's ledger entry names the consumer batch row its receipt is stored in (the
# row's ``ROW_KEY``: crm_platform.consumer), so confirm_again finds it with one index entry per
# row. Until the nineteenth session an index over every receipt in every batch row
# (``receipt_in_batch``, retired: an index entry per drained handoff, and the receipts walked
# again at each mark of the row) found it (docs/performance.md, nineteenth session, drainstore).
RECEIPT_ROW = "receipt_row"
RETIRED_OUTBOX_INDEXES = ("receipt_in_batch",)
RECEIPTED_KEPT = timedelta(days=7)  # receipted handoffs are kept a week for forensics

Action = Literal["resend", "wait", "give_up", "gone"]


@dataclass(frozen=True)
class ResendPolicy:
    after: timedelta
    max_backoff: timedelta
    max_attempts: int
    # Re-send even though no later handoff was receipted (a lone handoff; a receiver
    # silent for this long) once a publish is this old.
    silent_after: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, s: ServiceSettings) -> ResendPolicy:
        return cls(
            after=timedelta(seconds=s.handoff_resend_after_seconds),
            max_backoff=timedelta(seconds=s.handoff_resend_max_backoff_seconds),
            max_attempts=s.handoff_resend_max_attempts,
            silent_after=timedelta(seconds=s.handoff_resend_silent_after_seconds),
        )

    def wait(self, resends: int) -> timedelta:
        """How long a publish may stay unreceipted after ``resends`` re-sends (doubling, capped)."""
        return min(self.after * (1 << min(resends, 32)), max(self.max_backoff, self.after))


@dataclass(frozen=True)
class Decision:
    action: Action
    next_check_at: datetime | None = None


def decide(
    policy: ResendPolicy,
    *,
    resends: int,
    outbox_row: dict[str, Any] | None,
    now: datetime,
    overtaken: bool,
) -> Decision:
    """What to do with one pending handoff whose check is due (pure).

    ``overtaken``: a handoff of the same kind that occurred ``policy.after`` later has
    been receipted, so the receiver is working and past this one: it was lost (or
    its receipt was). Without that sign the receiver may just be down or behind, and
    copies would only pile up behind its backlog: the handoff waits, and is re-sent
    anyway once its publish is ``policy.silent_after`` old (a lone handoff has no
    later one to be overtaken by).
    """
    if outbox_row is None:
        return Decision("gone")  # its outbox row expired or was removed: nothing to re-send
    published_at = outbox_row.get("published_at")
    if not outbox_row.get("published") or published_at is None:
        return Decision("wait", now + policy.after)  # still in the backlog: late, not lost
    due = published_at + policy.wait(resends)
    if due > now:
        return Decision("wait", due)
    silent_due = published_at + max(policy.silent_after, policy.wait(resends))
    if not overtaken and silent_due > now:
        return Decision("wait", min(silent_due, now + policy.after))
    if resends >= policy.max_attempts:
        return Decision("give_up")
    return Decision("resend", now + policy.wait(resends + 1))


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db[HANDOFFS_SENT].create_index([("state", ASCENDING), ("next_check_at", ASCENDING)], name="due")
    await db[HANDOFFS_SENT].create_index(
        "receipted_at", expireAfterSeconds=int(RECEIPTED_KEPT.total_seconds()), name="receipted_ttl"
    )
    # The receiver finds the receipt it stored for a handoff (confirm_again).
    await db[OUTBOX].create_index(
        "envelope.payload.handoff_event_id",
        name="receipt_of_handoff",
        partialFilterExpression={"event_type": RECEIPT_EVENT},
    )
    # ... and a consumer batch's row, by the key its handoffs' ledger entries name (RECEIPT_ROW).
    await db[OUTBOX].create_index(ROW_KEY, name="receipt_rows", sparse=True)
    await drop_retired_indexes(db[OUTBOX], RETIRED_OUTBOX_INDEXES)


def _receipt_for(raw: Any, department: str) -> Envelope | None:
    """The receipt envelope in a raw record when it is one for ``department``'s handoffs, else
    None (raises when such a record is not a valid envelope).

    The receipts topic carries every department's receipts; each department reads them all and
    keeps its own. In a backlog drain most are the ones this department just emitted for the
    handoffs it received (sales: one per ``lead.qualified``): each was validated as a whole
    envelope (10.6 us) only to be dropped. Now the JSON is parsed (3.9 us) and its type and
    ``from_department`` looked at first; only a receipt for this department is validated
    (docs/performance.md, eleventh session, drain)."""
    # The string cache for keys only: a receipt's values are all new (ids, times), and most
    # receipts are dropped here (1.60 against 2.09 us a receipt; twenty-sixth session, salesdrain).
    doc = pydantic_core.from_json(raw, cache_strings="keys")
    payload = doc.get("payload") if isinstance(doc, dict) else None
    if not isinstance(payload, dict) or doc.get("event_type") != RECEIPT_EVENT:
        return None
    if payload.get("from_department") != department:
        return None
    return Envelope.model_validate(doc)


class HandoffTracker:
    """Receipt listener + re-send timer for the handoffs one service sends."""

    def __init__(
        self,
        store: Store,
        settings: ServiceSettings,
        *,
        department: str,
        wake_relay: Callable[[], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.department = department
        self.service = settings.service_name
        self.group_id = f"{settings.group_id}.handoff-receipts"
        self.policy = ResendPolicy.from_settings(settings)
        self.wake_relay = wake_relay
        self._stopping = asyncio.Event()
        self._seen_handoffs: set[str] = set()
        # Per handoff: when the newest receipted handoff occurred (from the receipts seen).
        self.newest_receipted: dict[str, datetime] = {}
        # The receipt partitions this member holds: the runtime's watchdog over the
        # listener's group reads them (a listener that stops silently is rejoined).
        self.partitions = PartitionTracker(self.service)
        self._listener: asyncio.Task[None] | None = None
        # How often the listener fetches while receipts flow: the patient idle pause, and well
        # within the re-send wait (a receipt marked later than that would look missing).
        self.fetch_interval = min(PATIENT_IDLE_PAUSE_SECONDS, self.policy.after.total_seconds() / 4)

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="handoff-receipts-listener")
        try:
            await self._resend_loop()
        finally:
            await self._stop_listener()

    async def rejoin(self) -> None:
        """Drop the receipt listener and its Kafka client, then start it afresh (a new member).

        The watchdog calls it when the listener's group makes no progress while receipts
        wait (the broker restarts that left the departments' own consumers silently
        stalled can do the same to this one). Bounded: a client stuck on a broker that
        went away must not hold the watchdog too.
        """
        await self._stop_listener()
        self.partitions.reset()
        if not self._stopping.is_set():
            self._listener = asyncio.create_task(self._listen(), name="handoff-receipts-listener")

    async def _stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener], timeout=10)

    # -- receipts -----------------------------------------------------------------
    def ours(self, raw_values: Iterable[Any]) -> list[str]:
        """The handoff event ids receipted for this department, from raw receipt records.

        Also notes, per handoff, when the newest receipted handoff occurred (see :func:`decide`).
        """
        ids = []
        for raw in raw_values:
            try:
                env = _receipt_for(raw, self.department)
                if env is None:
                    continue
                payload = env.payload
                event_id, handoff = payload["handoff_event_id"], str(payload["handoff"])
                occurred = datetime.fromisoformat(str(payload["occurred_at"]))
            except Exception:
                continue  # not ours to judge: analytics dead-letters malformed receipts
            if occurred.tzinfo is None or not _consistent(payload):
                continue
            ids.append(str(event_id))
            newest = self.newest_receipted.get(handoff)
            if newest is None or occurred > newest:
                self.newest_receipted[handoff] = occurred
        return ids

    def overtaken(self, handoff: str, created_at: datetime) -> bool:
        newest = self.newest_receipted.get(handoff)
        return newest is not None and newest >= created_at + self.policy.after

    async def mark_receipted(self, event_ids: list[str]) -> int:
        """Mark these handoffs receipted; returns how many were not receipted before. A handoff
        with no record yet (the relay records it with its gathered mark, after the publish: a
        receipt mostly comes first) is recorded receipted now, and the relay's record then fills
        in the rest (crm_platform.mongo.handoff_upserts). The recorded ones in one statement
        first, the upserts only for the rest (a drain's receipts come 500 at a time)."""
        sent, now = self.store.db[HANDOFFS_SENT], utcnow()
        ids = list(dict.fromkeys(event_ids))
        result = await sent.update_many(
            {"_id": {"$in": ids}, "state": {"$in": [PENDING, GAVE_UP]}},
            {"$set": {"state": RECEIPTED, "receipted_at": now}},
        )
        if result.matched_count == len(ids):
            return result.modified_count
        # Receipted before (a receipt confirmed again), or not recorded yet: the latter
        # inserted as receipted, in one round trip (a record receipted before is left as it is).
        receipted = [{"$set": {"state": RECEIPTED, "receipted_at": {"$ifNull": ["$receipted_at", now]}}}]
        ops = [UpdateOne({"_id": i}, receipted, upsert=True) for i in ids]
        early = await sent.bulk_write(ops, ordered=False)
        return result.modified_count + early.modified_count + early.upserted_count

    async def _listen(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            # Patient: a receipt is needed within minutes (the re-send timer), not within the
            # idle pause (crm_platform.kafka.be_patient: a third of a department's idle fetches).
            consumer = be_patient(
                make_consumer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    group_id=self.group_id,
                    client_id=f"{self.service}-receipts",
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                )
            )
            # And while receipts flow (one a handoff), the receipts of a while in one fetch, one
            # mark and one offset commit, not one each per receipt (crm_platform.kafka.pace_records).
            pace_records(consumer, self.fetch_interval)
            consumer.subscribe([HANDOFF_RECEIPTS], listener=self.partitions)
            try:
                await start_client(consumer, self.settings.kafka_start_seconds)
                backoff = 0.5
                while not self._stopping.is_set():
                    # Cancelled on a stop: the wait ends with records, or on the process's
                    # wake-up grid after a few seconds (kafka.wait_for_records_ms), not twice a second.
                    batches = await consumer.getmany(
                        timeout_ms=wait_for_records_ms(RECEIPTS_WAIT_SECONDS), max_records=500
                    )
                    if not batches:
                        continue
                    ids = self.ours(r.value for records in batches.values() for r in records)
                    if ids:
                        await self.mark_receipted(ids)
                    await consumer.commit()  # only after the marks are stored
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "receipt listener %s failed (%s); retrying in %.1f s", self.group_id, exc, backoff
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                await stop_client(consumer)

    # -- re-sends -----------------------------------------------------------------
    async def _resend_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.check_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("handoff receipt check failed (%s); retrying", exc)
            await self._sleep(self.settings.handoff_check_seconds)

    async def check_round(self) -> dict[str, int]:
        """One round of the re-send timer: the gauges, and the checks of the handoffs due.

        One read when nothing is due (the usual round: receipts come within a second, a
        handoff is due only ``CRM_HANDOFF_RESEND_AFTER_SECONDS`` after it occurred): the
        gauges' aggregate also counts the handoffs due, and :meth:`check_due`'s read runs only
        when it counted some (this was a find and an aggregate every round, in every sending
        service, busy or idle). After checks that gave a handoff up the gauges are read again
        (a wait or a re-send leaves a handoff pending, and the gauges as they were)."""
        rows = await self._unreceipted(utcnow())
        counts: dict[str, int] = {}
        if any(row["due"] for row in rows):
            counts = await self.check_due()
            if counts.get("give_up") or counts.get("gone"):
                rows = await self._unreceipted(utcnow())
        self._set_gauges(rows)
        return counts

    async def check_due(self, limit: int = 200) -> dict[str, int]:
        """Check every pending handoff whose check is due; returns the count per action."""
        now = utcnow()
        cursor = (
            self.store.db[HANDOFFS_SENT]
            .find({"state": PENDING, "next_check_at": {"$lte": now}}, {"handoff": 1, "created_at": 1})
            .sort("next_check_at", 1)
            .limit(limit)
        )
        counts: dict[str, int] = {}
        waiting: list[str] = []
        for doc in await cursor.to_list():
            if not self.overtaken(doc["handoff"], doc["created_at"]) and (
                doc["created_at"] + self.policy.silent_after > now
            ):
                # Nothing shows the receiver is past it and it cannot be silent-due yet
                # (published no earlier than created): check again later, in one write
                # for all of them, not one transaction each (a department that is down
                # leaves thousands pending).
                waiting.append(doc["_id"])
                continue
            action = await self._check_one(doc["_id"])
            counts[action] = counts.get(action, 0) + 1
        if waiting:
            await self.store.db[HANDOFFS_SENT].update_many(
                {"_id": {"$in": waiting}, "state": PENDING},
                {"$set": {"next_check_at": now + self.policy.after}},
            )
            counts["wait"] = counts.get("wait", 0) + len(waiting)
        if counts.get("resend"):
            self.wake_relay()
        return counts

    async def _check_one(self, event_id: str) -> str:
        now = utcnow()
        outcome: dict[str, Any] = {}

        async def work(tx: Tx) -> str:
            sent = tx.db[HANDOFFS_SENT]
            doc = await sent.find_one({"_id": event_id, "state": PENDING}, session=tx.session)
            if doc is None or doc["next_check_at"] > now:
                return "skip"  # receipted meanwhile, or another replica checked it
            row = await _outbox_row(tx, event_id, doc.get("row"))
            overtaken = self.overtaken(doc["handoff"], doc["created_at"])
            decision = decide(
                self.policy, resends=doc["resends"], outbox_row=row, now=now, overtaken=overtaken
            )
            outcome.update(doc)
            if decision.action == "resend":
                assert row is not None
                await _put_back(tx, row, now)
                update: dict[str, Any] = {
                    "$set": {"next_check_at": decision.next_check_at, "last_resent_at": now},
                    "$inc": {"resends": 1},
                }
            elif decision.action == "wait":
                update = {"$set": {"next_check_at": decision.next_check_at}}
            else:
                update = {"$set": {"state": GAVE_UP, "gave_up_at": now, "gave_up_because": decision.action}}
            await sent.update_one({"_id": event_id}, update, session=tx.session)
            return decision.action

        action = await self.store.transaction(work)
        self._report(action, event_id, outcome)
        return action

    def _report(self, action: str, event_id: str, doc: dict[str, Any]) -> None:
        handoff = str(doc.get("handoff", "?"))
        fields = {"handoff": handoff, "event_id": event_id, "key": doc.get("key")}
        if action == "resend":
            metrics.HANDOFFS_RESENT.labels(self.service, handoff).inc()
            log.warning(
                "handoff %s %s has no receipt: published again (re-send %d of at most %d)",
                handoff,
                event_id,
                int(doc.get("resends", 0)) + 1,
                self.policy.max_attempts,
                extra=fields,
            )
        elif action in ("give_up", "gone"):
            log.error(
                "handoff %s %s still has no receipt after %d re-sends: given up (%s), needs an operator",
                handoff,
                event_id,
                int(doc.get("resends", 0)),
                "outbox row gone" if action == "gone" else "max attempts reached",
                extra=fields,
            )

    async def refresh_gauges(self) -> None:
        self._set_gauges(await self._unreceipted(utcnow()))

    async def _unreceipted(self, now: datetime) -> list[dict[str, Any]]:
        """Per handoff and state (pending, given up): how many, the oldest, and how many are
        due for a check at ``now`` (:meth:`check_due`'s condition)."""
        due = {"$and": [{"$eq": ["$state", PENDING]}, {"$lte": ["$next_check_at", now]}]}
        cursor = await self.store.db[HANDOFFS_SENT].aggregate(
            [
                {"$match": {"state": {"$in": [PENDING, GAVE_UP]}}},
                {
                    "$group": {
                        "_id": {"handoff": "$handoff", "state": "$state"},
                        "count": {"$sum": 1},
                        "oldest": {"$min": "$created_at"},
                        "due": {"$sum": {"$cond": [due, 1, 0]}},
                    }
                },
            ]
        )
        return await cursor.to_list()

    def _set_gauges(self, rows: list[dict[str, Any]]) -> None:
        now = utcnow()
        unreceipted: dict[str, int] = dict.fromkeys(self._seen_handoffs, 0)
        given_up: dict[str, int] = dict.fromkeys(self._seen_handoffs, 0)
        oldest: dict[str, float] = dict.fromkeys(self._seen_handoffs, 0.0)
        for row in rows:
            handoff, state = row["_id"]["handoff"], row["_id"]["state"]
            unreceipted[handoff] = unreceipted.get(handoff, 0) + row["count"]
            if state == GAVE_UP:
                given_up[handoff] = row["count"]
            age = max(0.0, (now - row["oldest"]).total_seconds())
            oldest[handoff] = max(oldest.get(handoff, 0.0), age)
        for handoff, count in unreceipted.items():
            metrics.HANDOFFS_UNRECEIPTED.labels(self.service, handoff).set(count)
            metrics.HANDOFFS_GIVEN_UP.labels(self.service, handoff).set(given_up.get(handoff, 0))
            metrics.HANDOFF_UNRECEIPTED_OLDEST.labels(self.service, handoff).set(oldest.get(handoff, 0.0))
        self._seen_handoffs |= set(unreceipted)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass


async def _outbox_row(tx: Tx, event_id: str, batch_row: str | None) -> dict[str, Any] | None:
    """The outbox row that holds a handoff: its own (or the one a re-send put back), else the
    batch row its transaction stored it in (``batch_row``, its ``handoffs_sent`` record's
    ``row``), with only that handoff's item under ``events``; None when neither is left."""
    fields = {"published": 1, "published_at": 1}
    row = await tx.db[OUTBOX].find_one({"event_id": event_id}, fields, session=tx.session)
    if row is not None or batch_row is None:
        return row
    found = await tx.db[OUTBOX].find_one(
        {"event_id": batch_row},
        {**fields, "created_at": 1, BATCH_EVENTS: {"$elemMatch": {"event_id": event_id}}},
        session=tx.session,
    )
    return found if found is not None and found.get(BATCH_EVENTS) else None


async def _put_back(tx: Tx, row: dict[str, Any], now: datetime) -> None:
    """Publish a handoff again with the same event id: its own row back to pending, or, for a
    handoff inside a batch row, a pending row of its own holding the same item (the batch's
    other events are not published again; a later re-send finds this row by its event id)."""
    items = row.get(BATCH_EVENTS)
    if items is None:
        await tx.db[OUTBOX].update_one(
            {"_id": row["_id"], "published": True},
            {"$set": {"published": False, "resent_at": now}, "$unset": {"published_at": ""}},
            session=tx.session,
        )
        return
    alone = {**items[0], "published": False, "created_at": row["created_at"], "resent_at": now}
    await tx.db[OUTBOX].insert_one(alone, session=tx.session)


async def confirm_again(store: Store, envelope: Envelope) -> str:
    """A handoff this receiver already stored arrived again: publish its receipt again.

    The sender re-sends a handoff when no receipt reached it; when the handoff did
    arrive, the receiver's ledger drops the copy, and without a new receipt the
    sender would re-send until it gives up. The receipt stored with the effect is
    put back in the outbox (the same receipt event, so analytics counts it once);
    if its outbox row has expired, a new receipt with the originally stored time
    is emitted. Idempotent: a receipt still waiting in the outbox is left alone.
    Returns ``republished``, ``pending`` or ``emitted``.
    """
    event_id = str(envelope.event_id)
    query = {"event_type": RECEIPT_EVENT, "envelope.payload.handoff_event_id": event_id}
    row = await store.db[OUTBOX].find_one(query, {"published": 1})
    if row is not None:
        if not row.get("published"):
            return "pending"
        await store.db[OUTBOX].update_one(
            {"_id": row["_id"], "published": True},
            {"$set": {"published": False}, "$unset": {"published_at": ""}},
        )
        store.wake()
        return "republished"
    ledger = await store.db[PROCESSED].find_one({"_id": event_id}, {"processed_at": 1, RECEIPT_ROW: 1})
    if (
        ledger
        and ledger.get(RECEIPT_ROW) is not None
        and await _republish_from_batch(store, event_id, ledger[RECEIPT_ROW])
    ):
        return "republished"
    stored_at = ledger["processed_at"] if ledger and ledger.get("processed_at") else utcnow()
    handoff = HANDOFF_BY_EVENT_TYPE[envelope.event_type]

    async def work(tx: Tx) -> None:
        tx.emit(
            HandoffReceivedV1(
                handoff=handoff.name,
                handoff_event_id=event_id,
                handoff_event_type=envelope.event_type,
                from_department=handoff.from_department,
                to_department=handoff.to_department,
                occurred_at=envelope.occurred_at,
                stored_at=stored_at,
                transport_latency_seconds=max(0.0, (stored_at - envelope.occurred_at).total_seconds()),
            )
        )

    await store.transaction(work)
    return "emitted"


async def _republish_from_batch(store: Store, event_id: str, row_key: Any) -> bool:
    """The receipt stored inside a batch row (a consumer's batch: ``Tx.batch_emits``; the rows
    of the transaction ``row_key`` names) goes out again alone: a row of its own holding that
    same receipt (same event id), pending. The batch row's other events are not published
    again. False when no such row holds it (expired, or stored before rows had a key: a ledger
    entry of an earlier version names none, and then a new receipt is emitted)."""
    item = {"event_type": RECEIPT_EVENT, "envelope.payload.handoff_event_id": event_id}
    found = await store.db[OUTBOX].find_one(
        {ROW_KEY: row_key, BATCH_EVENTS: {"$elemMatch": item}}, {f"{BATCH_EVENTS}.$": 1, "created_at": 1}
    )
    if found is None:
        return False
    receipt = found[BATCH_EVENTS][0]
    try:
        await store.db[OUTBOX].insert_one({**receipt, "published": False, "created_at": found["created_at"]})
    except DuplicateKeyError:
        pass  # another copy of the handoff put it back meanwhile: its row is the one found first
    store.wake()
    return True


def _consistent(payload: dict[str, Any]) -> bool:
    """A receipt agrees with the handoff table: its handoff, event type and departments.

    A receipt that names a handoff this department never sends, or claims another
    receiver, cannot silence a re-send. Who may write the receipts topic at all is
    enforced by the brokers' ACLs (each department's KafkaUser), not here.
    """
    handoff = HANDOFF_BY_EVENT_TYPE.get(str(payload.get("handoff_event_type")))
    return (
        handoff is not None
        and handoff.name == payload.get("handoff")
        and handoff.from_department == payload.get("from_department")
        and handoff.to_department == payload.get("to_department")
    )
