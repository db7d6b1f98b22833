"""``crm-ops`` against the real broker and mongod: dead letters, group lag, outbox backlog.

Each test makes its own topics, group or database (unique names), runs the CLI's ``main``
as an operator would and reads its ``--json`` output; the progress bar is checked on stderr.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from crm_contracts.topics import TopicSpec, dead_letter_topic
from crm_platform import ops
from crm_platform.dead_letters import dead_letter_headers
from crm_platform.kafka import ensure_topics, make_consumer
from crm_platform.testing import produce
from pymongo import MongoClient
from reliability.probe import commit_offsets, delete_records_before

pytestmark = pytest.mark.integration


def _dead_letter_record(reason: str, offset: int) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        [("correlation_id", b"journey-1")],
        reason=reason,
        error=f"{reason}: details",
        consumer_group="sales",
        topic="crm.leads.lead-qualified",
        partition=3,
        offset=offset,
        failed_at=datetime(2026, 12, 5, 3, 0, tzinfo=UTC),
    )


async def test_dead_letters_are_listed_with_their_reasons_and_shown_in_full(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    department = f"ops-{uuid.uuid4().hex[:8]}"
    topic = dead_letter_topic(department)
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, "test", "dlq", partitions=1, replication_factor=1)])
    event = {"event_type": "lead.qualified", "event_id": "e-1", "schema_version": 9}
    await produce(
        kafka_bootstrap,
        topic,
        json.dumps(event).encode(),
        key=b"lead-1",
        headers=_dead_letter_record("unknown_version", 10),
    )
    await produce(kafka_bootstrap, topic, b"\xff not json", headers=_dead_letter_record("malformed", 11))
    await produce(kafka_bootstrap, topic, b"{}", headers=_dead_letter_record("malformed", 12))

    listed, err = await _in_thread(
        capsys,
        "dead-letters",
        "--department",
        department,
        "--kafka-bootstrap-servers",
        kafka_bootstrap,
        "--json",
    )
    assert f"reading {topic}" in err
    assert "3/3" in err, "the progress bar reaches the end"
    assert listed["reasons"] == {department: {"malformed": 2, "unknown_version": 1}}
    first = listed["dead_letters"][0]
    assert (first["reason"], first["event_type"], first["event_id"], first["key"]) == (
        "unknown_version",
        "lead.qualified",
        "e-1",
        "lead-1",
    )
    assert (first["source_topic"], first["source_partition"], first["source_offset"]) == (
        "crm.leads.lead-qualified",
        3,
        10,
    )
    assert [d["source_offset"] for d in listed["dead_letters"]] == [10, 11, 12]

    only, _ = await _in_thread(
        capsys,
        "dead-letters",
        "--department",
        department,
        "--reason",
        "malformed",
        "--kafka-bootstrap-servers",
        kafka_bootstrap,
        "--json",
    )
    assert [d["offset"] for d in only["dead_letters"]] == [1, 2]

    shown, _ = await _in_thread(
        capsys,
        "dead-letter",
        "--department",
        department,
        "--offset",
        "1",
        "--kafka-bootstrap-servers",
        kafka_bootstrap,
        "--json",
    )
    assert shown["headers"]["dlq_error"] == "malformed: details"
    assert shown["headers"]["correlation_id"] == "journey-1"
    assert shown["value"] == b"\xff not json".decode(errors="replace")


async def test_an_unknown_dead_letter_or_topic_is_an_error_in_words(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    department = f"ops-{uuid.uuid4().hex[:8]}"
    out = io.StringIO()
    code = await _main_in_thread(
        ["dead-letters", "--department", department, "--kafka-bootstrap-servers", kafka_bootstrap], out
    )
    assert code == 2
    assert f"topic {dead_letter_topic(department)} does not exist" in capsys.readouterr().err


async def test_lag_per_group_and_partition_from_committed_offsets_and_high_watermarks(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"crm.test.ops.{uuid.uuid4().hex[:8]}"
    group = f"ops-lag-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, "test", "lag", partitions=2, replication_factor=1)])
    for i in range(5):
        await produce(kafka_bootstrap, topic, b"x", key=f"k{i}".encode())
    ends = make_consumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await ends.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        ends.assign(tps)  # a manual assignment may commit for its group
        high = await ends.end_offsets(tps)
        await ends.commit({tps[0]: 0, tps[1]: high[tps[1]]})  # partition 0 unread, 1 caught up
    finally:
        await ends.stop()

    lags, err = await _in_thread(
        capsys, "lag", "--group-prefix", group, "--kafka-bootstrap-servers", kafka_bootstrap, "--json"
    )
    assert "reading consumer groups" in err
    assert "1/1" in err
    assert [(x["group"], x["topic"], x["partition"], x["committed"], x["end"], x["lag"]) for x in lags] == [
        (group, topic, 0, 0, high[tps[0]], high[tps[0]]),
        (group, topic, 1, high[tps[1]], high[tps[1]], 0),
    ]
    assert high[tps[0]] + high[tps[1]] == 5


async def test_lag_counts_from_the_log_start_when_the_records_below_it_are_gone(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group committed at 1, then retention (here delete-records) took the log to 3: nothing
    is left for it to read, so its lag is 0, not 2; the start is shown beside the offsets."""
    topic = f"crm.test.ops.{uuid.uuid4().hex[:8]}"
    group = f"ops-gone-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, "test", "gone", partitions=1, replication_factor=1)])
    for i in range(3):
        await produce(kafka_bootstrap, topic, b"x", key=f"k{i}".encode())
    await commit_offsets(kafka_bootstrap, group, {tp: 1})
    await delete_records_before(kafka_bootstrap, tp, 3)

    lags, _ = await _in_thread(
        capsys, "lag", "--group-prefix", group, "--kafka-bootstrap-servers", kafka_bootstrap, "--json"
    )
    assert [(x["committed"], x["start"], x["end"], x["lag"]) for x in lags] == [(1, 3, 3, 0)]


async def test_outbox_backlog_counts_only_unpublished_events_and_ages_the_oldest(
    mongodb_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"ops_outbox_{uuid.uuid4().hex[:8]}"
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri)
    oldest = datetime.now(UTC) - timedelta(minutes=10)
    try:
        client[database]["outbox"].insert_many(
            [
                {"event_id": "a", "published": True, "created_at": oldest - timedelta(hours=1)},
                {"event_id": "b", "published": False, "created_at": oldest},
                {"event_id": "c", "published": False, "created_at": datetime.now(UTC)},
            ]
        )
        empty = f"{database}_empty"
        (backlog, other), err = await _in_thread(
            capsys,
            "outbox",
            "--mongodb-uri",
            mongodb_uri,
            "--database",
            database,
            "--database",
            empty,
            "--json",
        )
        assert "reading outboxes" in err
        assert "2/2" in err
        assert (backlog["database"], backlog["pending"]) == (database, 2)
        assert 590 <= backlog["oldest_age_seconds"] <= 3600
        assert (other["pending"], other["oldest_age_seconds"]) == (0, None)
    finally:
        client.drop_database(database)
        client.close()


async def _main_in_thread(argv: list[str], out: io.StringIO) -> int:
    """``main`` runs its own event loop (asyncio.run), so it runs beside the test's."""
    import asyncio

    return await asyncio.to_thread(ops.main, argv, out)


async def _in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str]:
    out = io.StringIO()
    assert await _main_in_thread(list(argv), out) == 0, capsys.readouterr().err
    return json.loads(out.getvalue()), capsys.readouterr().err
