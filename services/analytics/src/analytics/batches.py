"""Fetched batches handed over whole: the worker's source topics skip faust's per-message delivery.

faust's consumer hands every fetched record to its conductor alone: a ``wait_first`` of the
conductor's callback against the flow-suspension event (two tasks and an ``asyncio.wait`` per
record), the conductor's flow-control and producer-buffer checks and lock, an ``Event`` built
and put on the topic channel's queue, the stream taking it off and the agent's loop resuming.
In the worker's replay that was about 30% of its CPU, more than the folds themselves
(docs/performance.md, eighth session).

:class:`BatchConsumer` is faust's aiokafka consumer with one change: the records of the topics
given to :meth:`BatchConsumer.deliver_batches` go to one call of the batch handler per fetch
(each partition's records in offset order), never through the conductor. Everything else
stays faust's: the consumer group, static membership, the assignment, the tables' recovery
(the changelog topics' records still go through the conductor, one by one), read offsets and
gaps, acks and commits (the handler acks each message with ``consumer.ack`` once it may be
committed), flow control on a rebalance (the handler stops at the first record it sees with
the flow stopped or the generation changed; records it did not take are fetched again after
faust's seek to the committed offsets).

The handler returns how many of the batch's records it took (a prefix of the list): only
those advance the read offsets.

The batch is aiokafka's records as fetched, not faust's messages (docs/performance.md,
eighteenth session, replay): a ``ConsumerMessage`` built, tracked and acked one by one was
about a tenth of the replaying worker's CPU. What faust did per message is done per batch with
the same bookkeeping: the read offsets and gaps per partition (:meth:`BatchConsumer._read`),
acks into faust's acked offsets, so faust commits exactly what it committed before
(:meth:`BatchConsumer.ack_records`), faust's monitor's message counts, and a rebalance or a stop
waits for what was handed over as it waited for tracked messages (:meth:`BatchConsumer.wait_empty`,
the handler's ``settled``). A rebalance is seen as before: the handler stops at the first
record it meets with the flow stopped or the generation changed from the one of the fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

from crm_platform.heap import batch_heap
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

# A fetch of at least 1/CATCH_UP_SHARE of broker_max_poll_records says the consumer catches up.
CATCH_UP_SHARE = 10
# (the fetched records, the consumer generation they were fetched in) -> how many were taken
BatchHandler = Callable[[Sequence[Any], int], Awaitable[int]]


class BatchConsumer(Consumer):
    """faust's aiokafka consumer delivering some topics' records per fetch (module doc)."""

    _batch_topics: frozenset[str] = frozenset()
    _batch_handler: BatchHandler | None = None
    _batch_settled: Callable[[], Awaitable[None]] | None = None
    batches_delivered = 0  # diagnostics and tests
    catching_up = False  # the last fetch's batch was large (fetch_heap)

    def deliver_batches(
        self,
        topics: Iterable[str],
        handler: BatchHandler,
        settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Hand each fetch's records of ``topics`` to ``handler`` (before the consumer starts);
        ``settled`` waits until whatever the handler took is acked (or will never be)."""
        self._batch_topics = frozenset(topics)
        self._batch_handler = handler
        self._batch_settled = settled

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the broker's loop
        """faust's fetch loop (``Consumer._drain_messages``), one delivery per fetch."""
        if self._batch_handler is None:
            return await super()._drain_messages(fetcher)
        should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                with self.fetch_heap():
                    records, active = await self._wait_next_records(1.0)
                    await self.sleep(0)
                    if records and not self.should_stop:
                        await self.deliver(records, active)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Broker stopped consumer, shutting down...")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Consumer shutting down for user cancel.")
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def deliver(self, records: Mapping[TP, list[Any]], active: set[TP] | None) -> None:
        """One fetch's records: the batch topics' to the handler at once, the others (the
        tables' changelogs) one by one through the conductor, as faust does."""
        if not self.flow_active:
            await self.perform_seek()  # as faust's getmany: back to the committed offsets
            return
        generation = self.app.consumer_generation_id
        batch: list[Any] = []
        runs: list[tuple[TP, int]] = []  # each partition's share of the batch, in order
        for tp, tp_records in records.items():
            if not (active is None or tp in active or tp in self._buffered_partitions):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in self._batch_topics:
                unread = self._unread_records(tp, tp_records)
                if unread:
                    batch.extend(unread)
                    runs.append((tp, len(unread)))
            else:
                await self._deliver_each(tp, tp_records)
        self.catching_up = len(batch) >= self.catch_up_records()
        if batch and self._batch_handler is not None:
            taken = await self._batch_handler(batch, generation)
            self.batches_delivered += 1
            start = 0
            for tp, count in runs:
                if start >= taken:
                    break
                run = batch[start : min(start + count, taken)]
                await self._read(tp, run)
                self._received(tp, run)
                start += count
            await self._maybe_commit()

    def catch_up_records(self) -> int | float:
        """A fetch's batch this large says the consumer catches up (a replay, a backlog): a tenth
        of what a poll hands over at most (``broker_max_poll_records``; a fetch often returns less
        at the end of what the fetcher holds); a live fetch has a few records."""
        most = self.app.conf.broker_max_poll_records
        return most // CATCH_UP_SHARE if most else float("inf")

    def fetch_heap(self) -> AbstractContextManager[None]:
        """The cyclic collector's settings for the next fetch and its fold: while the consumer
        catches up (the last fetch's batch was large: :meth:`catch_up_records`), no young
        collection unless :data:`~crm_platform.heap.GC_BATCH_YOUNG_THRESHOLD` net allocations
        pile up (:func:`~crm_platform.heap.batch_heap`); else the process's own.

        A large fetch is up to ``broker_max_poll_records`` (10,000) records decoded in faust's
        consumer thread, each an aiokafka record with its headers, alive until the batch is folded
        and acked: at the worker's young threshold (10,000) the collections in that decoding
        walked them, promoted them, and middle and full collections walked them again (after
        start-up 202 young, 18 middle and 2 full collections in a 300,000-event replay, 0.98 s of
        the worker's CPU, 6%, freeing next to nothing; with this 28, 2 and 1, 0.52 s:
        docs/performance.md, twenty-third session, replay). Live fetches of a few records keep
        the process's threshold."""
        return batch_heap() if self.catching_up else nullcontext()

    def _unread_records(self, tp: TP, tp_records: list[Any]) -> list[Any]:
        """The records past what was read of ``tp`` (faust's ``>=``: the one at the read offset
        comes again), as aiokafka gives them."""
        last = self._read_offset[tp]
        if last is None:
            return tp_records
        return [record for record in tp_records if record.offset >= last]

    def _unread(self, tp: TP, tp_records: list[Any]) -> Iterable[Any]:
        """The records past what was read of ``tp``, as faust's messages."""
        for record in self._unread_records(tp, tp_records):
            yield self._to_message(tp, record)

    async def _read(self, tp: TP, taken: Sequence[Any]) -> None:
        """``taken`` records of ``tp`` (in offset order) were taken: note each gap between them
        (acks-enabled topics: compacted or transactional logs skip offsets), advance the read
        offset, as faust does per message."""
        last = self._read_offset[tp]
        gaps = self.app.topics.acks_enabled_for(tp.topic)
        for record in taken:
            offset = record.offset
            if gaps and last and offset - last > 1:
                await self._add_gap(tp, last + 1, offset)
            last = offset
        self._read_offset[tp] = last

    def _received(self, tp: TP, taken: Sequence[Any]) -> None:
        """faust's monitor counts the taken records as its ``on_message_in`` counts each message
        (the stream does it for the conductor's)."""
        monitor = self.app.monitor
        monitor.messages_received_total += len(taken)
        monitor.messages_active += len(taken)
        monitor.messages_received_by_topic[tp.topic] += len(taken)
        monitor.tp_read_offsets[tp] = taken[-1].offset

    def ack_records(self, records: Iterable[Any]) -> int:
        """Ack taken records, as faust's ``ack`` does each message: an offset not acked yet and
        not below the committed one joins faust's acked offsets of its partition, so faust
        commits it once every offset before it is acked too. Returns how many were acked."""
        offsets: dict[tuple[str, int], list[int]] = {}
        for record in records:
            key = (record.topic, record.partition)
            per_tp = offsets.get(key)
            if per_tp is None:
                per_tp = offsets[key] = []
            per_tp.append(record.offset)
        acked = 0
        with ack_lock:
            for (topic, partition), tp_offsets in offsets.items():
                if not self.app.topics.acks_enabled_for(topic):
                    continue
                tp = TP(topic, partition)
                committed = self._committed_offset[tp]
                index, acked_for_tp = self._acked_index[tp], self._acked[tp]
                for offset in tp_offsets:
                    if (committed is None or offset >= committed) and offset not in index:
                        index.add(offset)
                        acked_for_tp.append(offset)
                        acked += 1
            self._n_acked += acked
            notify(self._waiting_for_ack)
        self.app.monitor.messages_active -= acked  # faust's Monitor.on_message_out
        return acked

    async def wait_empty(self) -> None:
        """faust waits here, on a rebalance and on stopping, for every message it tracked to be
        acked: the batch handler's records are waited for the same way."""
        if self._batch_settled is not None:
            await self._batch_settled()
        await super().wait_empty()

    async def _deliver_each(self, tp: TP, tp_records: list[Any]) -> None:
        """faust's own delivery, one message at a time through the conductor."""
        generation = self.app.consumer_generation_id
        for message in self._unread(tp, tp_records):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            await self._maybe_commit()
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            await self._read(tp, (message,))

    async def _maybe_commit(self) -> None:
        """faust commits every ``broker_commit_every`` acks as well as every interval."""
        every = self._commit_every
        if every is not None and self._n_acked >= every:
            self._n_acked = 0
            await self.commit()
