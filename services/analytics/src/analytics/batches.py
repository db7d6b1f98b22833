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

The handler returns how many of the batch's messages it took (a prefix of the list): only
those advance the read offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP, Message

BatchHandler = Callable[[Sequence[Message]], Awaitable[int]]


class BatchConsumer(Consumer):
    """faust's aiokafka consumer delivering some topics' records per fetch (module doc)."""

    _batch_topics: frozenset[str] = frozenset()
    _batch_handler: BatchHandler | None = None
    batches_delivered = 0  # diagnostics and tests

    def deliver_batches(self, topics: Iterable[str], handler: BatchHandler) -> None:
        """Hand each fetch's records of ``topics`` to ``handler`` (before the consumer starts)."""
        self._batch_topics = frozenset(topics)
        self._batch_handler = handler

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the broker's loop
        """faust's fetch loop (``Consumer._drain_messages``), one delivery per fetch."""
        if self._batch_handler is None:
            return await super()._drain_messages(fetcher)
        should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
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
        batch: list[Message] = []
        for tp, tp_records in records.items():
            if not (active is None or tp in active or tp in self._buffered_partitions):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in self._batch_topics:
                batch.extend(self._unread(tp, tp_records))
            else:
                await self._deliver_each(tp, tp_records)
        if batch and self._batch_handler is not None:
            taken = await self._batch_handler(batch)
            self.batches_delivered += 1
            for message in batch[:taken]:
                await self._read(message.tp, message.offset)
            await self._maybe_commit()

    def _unread(self, tp: TP, tp_records: list[Any]) -> Iterable[Message]:
        """The records past what was read of ``tp``, as faust's messages."""
        last = self._read_offset[tp]
        for record in tp_records:
            if last is None or record.offset >= last:
                yield self._to_message(tp, record)

    async def _read(self, tp: TP, offset: int) -> None:
        """``offset`` of ``tp`` was taken: note a gap before it (acks-enabled topics: compacted
        or transactional logs skip offsets) and advance the read offset, as faust does."""
        last = self._read_offset[tp]
        if last and offset - last > 1 and self.app.topics.acks_enabled_for(tp.topic):
            await self._add_gap(tp, last + 1, offset)
        self._read_offset[tp] = offset

    async def _deliver_each(self, tp: TP, tp_records: list[Any]) -> None:
        """faust's own delivery, one message at a time through the conductor."""
        generation = self.app.consumer_generation_id
        for message in self._unread(tp, tp_records):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            await self._maybe_commit()
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            await self._read(tp, message.offset)

    async def _maybe_commit(self) -> None:
        """faust commits every ``broker_commit_every`` acks as well as every interval."""
        every = self._commit_every
        if every is not None and self._n_acked >= every:
            self._n_acked = 0
            await self.commit()
