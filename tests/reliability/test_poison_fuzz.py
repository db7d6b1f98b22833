"""10,000 malformed records on every consumed topic: each dead-lettered once, nobody stops.

The departments that consume (leads, sales, service-desk) and the analytics faust
worker run as their own processes, as in production, with consumer groups of their
own. A seeded generator (``reliability.fuzz_records``) sends at least
``CRM_FUZZ_RECORDS`` (default 10,000) records of every malformed shape to every topic
one of them consumes. Then:

- every record is in the dead-letter topic of every consumer of its topic exactly
  once (counted by its ``x-fuzz-id`` header), with the reason the platform's
  classification gives it;
- the key topics (issue 9, crypto-shredding) are fuzzed too: their holders read them with a
  consumer of their own (group ``<group>.person-keys``), which dead-letters like any other;
- every consumer group has committed up to the end of every topic it reads (its lag
  drained: no reconnect loop, no stuck partition) and every process still runs;
- a valid handoff sent afterwards to every partition of every handoff topic is
  handled by its receiver (a receipt; a verdict on a lead marketing does not know
  is refused by its business rule, ``unknown_lead``, which shows it was read).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from analytics.worker import SOURCE_TOPICS
from crm_contracts import Envelope
from crm_contracts.access import CONSUMES, PERSON_KEYS
from crm_contracts.topics import (
    ACCOUNT_SIGNAL,
    DEAL_WON,
    ERASURE_CONFIRMATIONS,
    GATEWAY_ERASURE_REQUESTS,
    GATEWAY_PERMISSIONS,
    HANDOFF_RECEIPTS,
    LEAD_QUALIFIED,
    LEAD_VERDICT,
    LEADS_PERSON_KEYS,
    SALES_PERSON_KEYS,
    dead_letter_topic,
)
from crm_platform.devinfra.launcher import Platform
from crm_platform.kafka import ensure_topics
from crm_platform.testing import TopicReader, eventually, idle_backoff_ms
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.structs import OffsetAndMetadata
from leads.consumers import TOPICS as LEADS_TOPICS
from reliability.fuzz_records import FUZZ_HEADER, FuzzRecord, generate, valid_handoff
from sales.consumers import TOPICS as SALES_TOPICS
from service_desk.consumers import TOPICS as SERVICE_DESK_TOPICS

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RECORDS = int(os.environ.get("CRM_FUZZ_RECORDS", "10000"))
SEED = int(os.environ.get("CRM_FUZZ_SEED", "20261204"))
RUN = uuid.uuid4().hex[:6]
KEYS_GROUP = ".person-keys"
SUFFIX = f"-fuzz-{RUN}"
# service -> the topics its consumer reads, from the services' own subscriptions
CONSUMERS: dict[str, list[str]] = {
    "leads": list(LEADS_TOPICS),
    "sales": list(SALES_TOPICS),
    "service-desk": list(SERVICE_DESK_TOPICS),
    "analytics": list(SOURCE_TOPICS),
    # the per-person key topics, each read by its holders' consumer of its own
    **{f"{service}{KEYS_GROUP}": list(topics) for service, topics in PERSON_KEYS.items()},
    # the departments' erasure reports and confirmations, read by the gateway
    "gateway": list(CONSUMES["gateway"]),
}
GROUPS = (
    {service: f"{service}{SUFFIX}" for service in ("leads", "sales", "service-desk", "gateway")}
    | {"analytics": f"crm-analytics{SUFFIX}"}
    | {f"{service}{KEYS_GROUP}": f"{service}{SUFFIX}{KEYS_GROUP}" for service in PERSON_KEYS}
)
FUZZED = sorted({topic for topics in CONSUMERS.values() for topic in topics})
HANDOFF_RULES = {LEAD_VERDICT: "unknown_lead"}  # marketing has no such lead: refused by its rule


def _dlq(consumer: str) -> str:
    """The dead-letter topic of a consumer (a department's key consumer writes its department's)."""
    return dead_letter_topic(consumer.removesuffix(KEYS_GROUP))


def test_every_consumer_s_topics_are_fuzzed_the_permission_policy_s_included() -> None:
    """The topics come from the consumers' own subscriptions: a topic a department starts to
    consume is fuzzed without a change here (the permission policy and the erasure requests,
    issue 9, are read by all; the key topics by their holders; the erasure reports and
    confirmations by the gateway)."""
    departments = {name: t for name, t in CONSUMERS.items() if KEYS_GROUP not in name and name != "gateway"}
    assert all(GATEWAY_PERMISSIONS in topics for topics in departments.values())
    assert all(GATEWAY_ERASURE_REQUESTS in topics for topics in departments.values())
    assert {LEADS_PERSON_KEYS, SALES_PERSON_KEYS, ERASURE_CONFIRMATIONS} <= set(FUZZED)


@pytest.fixture(scope="module")
def consumers(crm_infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000"))
    platform = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        Path(os.environ.get("CRM_E2E_LOGDIR", tmp_path_factory.mktemp("fuzz-logs"))),
        service_port_base=int(os.environ.get("CRM_FUZZ_SERVICE_PORT_BASE", str(base + 10))),
        db_prefix=f"fuzz_{RUN}_",
        group_suffix=SUFFIX,
        only=("leads", "sales", "service-desk", "analytics-worker", "gateway"),
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
    )
    ensure_topics(crm_infra.kafka_bootstrap)
    for service, topics in CONSUMERS.items():
        _start_group_at_end(crm_infra.kafka_bootstrap, GROUPS[service], topics)
    platform.start()
    try:
        platform.wait_ready(timeout=90)
        yield platform
    finally:
        platform.stop()


def _start_group_at_end(bootstrap: str, group: str, topics: list[str]) -> None:
    """The new group skips what other runs left in a shared broker: only this run's records count."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [
            KafkaTopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
        ]
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in ends.items()})
    finally:
        consumer.close()


async def _send(bootstrap: str, records: list[FuzzRecord]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
            for r in records  # send() only enqueues: one batch per partition travels at a time
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _send_valid_handoffs(bootstrap: str, run: str) -> dict[str, list[Envelope]]:
    """One valid handoff on every partition of every handoff topic."""
    sent: dict[str, list[Envelope]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic in (LEAD_QUALIFIED, LEAD_VERDICT, DEAL_WON, ACCOUNT_SIGNAL):
            for partition in sorted(await producer.partitions_for(topic)):
                env = valid_handoff(topic, run, partition)
                await producer.send_and_wait(
                    topic,
                    env.to_bytes(),
                    key=env.partition_key.encode(),
                    headers=env.headers(),
                    partition=partition,
                )
                sent.setdefault(topic, []).append(env)
    finally:
        await producer.stop()
    return sent


async def _lag(bootstrap: str) -> dict[str, int]:
    """Per consumer group: messages between its committed offsets and the topics' ends."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer.topics()
        lag = {}
        for service, topics in CONSUMERS.items():
            tps = [
                TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
            ]
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(GROUPS[service])
            lag[service] = sum(
                end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
            )
        return lag
    finally:
        await admin.close()
        await consumer.stop()


async def _read_to_end(reader: TopicReader) -> list[Any]:
    """Everything in the reader's topics up to their current ends."""
    consumer = reader._consumer
    assert consumer is not None
    ends = await consumer.end_offsets(list(consumer.assignment()))

    async def at_end() -> bool:
        await reader.poll()
        return all([await consumer.position(tp) >= end for tp, end in ends.items()])

    await eventually(at_end, timeout=60, what="the dead-letter topics read to their end")
    return reader.records


@pytest.mark.timeout(600)  # about a minute alone; several times that on a loaded 2-core box
async def test_every_malformed_record_is_dead_lettered_once_and_every_consumer_keeps_going(
    consumers: Platform, kafka_bootstrap: str
) -> None:
    records = generate(RECORDS, FUZZED, seed=SEED, run=RUN)
    assert len(records) >= 10_000 or RECORDS < 10_000
    shapes = Counter((r.shape, r.topic) for r in records)
    assert len(shapes) == len({r.shape for r in records}) * len(FUZZED), "every shape on every topic"
    dlqs = await TopicReader(kafka_bootstrap, *sorted({_dlq(s) for s in CONSUMERS})).start()
    receipts = await TopicReader(kafka_bootstrap, HANDOFF_RECEIPTS).start()
    try:
        started = time.monotonic()
        await _send(kafka_bootstrap, records)
        valid = await _send_valid_handoffs(kafka_bootstrap, RUN)
        sent_in = time.monotonic() - started
        await _drain(consumers, kafka_bootstrap)
        drained_in = time.monotonic() - started
        print(f"\n{len(records)} records sent in {sent_in:.1f} s, all drained after {drained_in:.1f} s")
        _assert_each_dead_lettered_once(records, await _read_to_end(dlqs))
        _assert_handled(valid, await _read_to_end(dlqs), await _read_to_end(receipts))

        # Restarted, the consumers start cleanly and repeat nothing: every outcome was committed.
        worker = consumers.procs["analytics-worker"]
        consumers.stop(("analytics-worker", "sales"))
        assert worker.returncode == 0, f"the analytics worker exited with {worker.returncode}"
        consumers.start(("analytics-worker", "sales"))
        consumers.wait_ready(timeout=90, names=("sales",))
        again = await _send_valid_handoffs(kafka_bootstrap, f"{RUN}-again")
        await _drain(consumers, kafka_bootstrap)
        _assert_each_dead_lettered_once(records, await _read_to_end(dlqs))
        _assert_handled(again, await _read_to_end(dlqs), await _read_to_end(receipts))
    finally:
        await dlqs.stop()
        await receipts.stop()


async def _drain(consumers: Platform, bootstrap: str) -> None:
    """Every group has committed up to the end of its topics, every process still running."""

    async def drained() -> dict[str, int] | None:
        for name, proc in consumers.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        lag = await _lag(bootstrap)
        return lag if not any(lag.values()) else None

    await eventually(drained, timeout=420, interval=1.0, what="every consumer group caught up")


def _ours(dead_letters: list[Any]) -> list[tuple[Any, dict[str, bytes]]]:
    """Dead letters written by this test's groups (the e2e platform's share the DLQ topics)."""
    groups = {(_dlq(consumer), group.encode()) for consumer, group in GROUPS.items()}
    pairs = [(d, {k: bytes(v or b"") for k, v in d.headers or ()}) for d in dead_letters]
    return [(d, h) for d, h in pairs if (d.topic, h.get("dlq_consumer_group")) in groups]


def _assert_each_dead_lettered_once(records: list[FuzzRecord], dead_letters: list[Any]) -> None:
    """Every record: once in the DLQ of every consumer of its topic, with its reason."""
    expected = Counter(
        (_dlq(service), r.fuzz_id, r.reason)
        for r in records
        for service, topics in CONSUMERS.items()
        if r.topic in topics
    )
    got = Counter(
        (d.topic, h[FUZZ_HEADER].decode(), h.get("dlq_reason", b"").decode())
        for d, h in _ours(dead_letters)
        if h.get(FUZZ_HEADER, b"").startswith(f"fuzz-{RUN}-".encode())
    )
    missing, extra = expected - got, got - expected
    assert not missing, f"{sum(missing.values())} not dead-lettered (as expected), e.g. {list(missing)[:5]}"
    assert not extra, f"{sum(extra.values())} dead-lettered twice or wrongly, e.g. {list(extra)[:5]}"


def _assert_handled(valid: dict[str, list[Envelope]], dead_letters: list[Any], receipts: list[Any]) -> None:
    """A valid handoff on every partition still arrives at its receiver."""
    receipt_ids = {env.payload.get("handoff_event_id") for env in _envelopes(receipts)}
    for topic in (LEAD_QUALIFIED, DEAL_WON, ACCOUNT_SIGNAL):
        missed = [str(env.event_id) for env in valid[topic] if str(env.event_id) not in receipt_ids]
        assert not missed, f"no receipt for the valid {topic} handoffs {missed}"
    refused = {h.get("event_id", b"").decode(): h["dlq_reason"].decode() for _, h in _ours(dead_letters)}
    for topic, rule in HANDOFF_RULES.items():
        for env in valid[topic]:
            assert refused.get(str(env.event_id)) == rule, f"{topic} handoff {env.event_id} not handled"


def _envelopes(records: list[Any]) -> Iterator[Envelope]:
    for r in records:
        try:
            yield Envelope.from_bytes(r.value)
        except ValueError:
            continue
