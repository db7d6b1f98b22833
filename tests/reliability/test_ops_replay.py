"""``crm-ops replay`` against the real broker and mongod.

Two departments consume one topic and both park an event (a business dead letter: their
handlers cannot place the lead yet). The first department ships its fix and the operator
replays its dead letter: that department handles it through its normal consumer path,
once; the other department, not fixed yet, skips the copy (it neither handles it nor
dead-letters it a second time: its own dead letter waits for its own replay). A second
replay of the same dead letter is a duplicate for the ledger (no second effect), and a dry
run produces nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from crm_contracts import Envelope
from crm_platform import ops
from crm_platform.consumer import DeadLetter
from crm_platform.kafka import make_consumer
from crm_platform.mongo import Tx
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import TopicReader, eventually, produce_envelope
from reliability.probe import envelope, record_effect

pytestmark = pytest.mark.integration


async def _effect_count(runtime: ServiceRuntime, event_id: object) -> int:
    doc = await runtime.db["effects"].find_one({"_id": str(event_id)})
    return int(doc["count"]) if doc else 0


async def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    code = await asyncio.to_thread(ops.main, list(argv), out)
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out.getvalue()), err


def _parked_by(record: Any, group: str) -> bool:
    return bool(dict(record.headers).get("dlq_consumer_group") == group.encode())


async def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = make_consumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_a_fixed_dead_letter_is_replayed_once_for_the_group_that_parked_it(
    kafka_bootstrap: str,
    make_settings: Callable[..., ServiceSettings],
    scratch_topics: Callable[[str], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = f"rel-replay-{uuid.uuid4().hex[:6]}"
    topic, dlq = scratch_topics(service)
    unplaceable = {"lead-poison"}

    async def fussy(tx: Tx, event: Any, env: Envelope) -> None:
        if event.lead_id in unplaceable:
            raise DeadLetter("unknown_lead", f"lead {event.lead_id} cannot be placed yet")
        await record_effect(tx, event, env)

    async def not_fixed_yet(tx: Tx, event: Any, env: Envelope) -> None:
        if event.lead_id == "lead-poison":
            raise DeadLetter("unknown_lead", "not fixed in this department")
        await record_effect(tx, event, env)

    parker = ServiceRuntime(
        make_settings(service, CRM_SERVICE_NAME=service, CRM_CONSUMER_GROUP=f"{service}-parker"),
        subscription=Subscription(topics=[topic], handlers={"lead.captured": fussy}),
    )
    other = ServiceRuntime(
        make_settings(service, CRM_SERVICE_NAME=service, CRM_CONSUMER_GROUP=f"{service}-other"),
        subscription=Subscription(topics=[topic], handlers={"lead.captured": not_fixed_yet}),
    )
    group, other_group = f"{service}-parker", f"{service}-other"
    reader = await TopicReader(kafka_bootstrap, dlq).start()
    ok, poison = envelope("lead-ok", "fine"), envelope("lead-poison", "parked")
    await parker.start()
    await other.start()
    try:
        await produce_envelope(kafka_bootstrap, topic, ok)
        await produce_envelope(kafka_bootstrap, topic, poison)
        await eventually(lambda: _effect_count(parker, ok.event_id), what="the ordinary event's effect")
        await eventually(lambda: _effect_count(other, ok.event_id), what="the other group's effect")
        parked = await reader.wait_for(
            lambda rs: [r for r in rs if dict(r.headers).get("dlq_consumer_group") == group.encode()] or None,
            what="the poison event dead-lettered by its group",
        )
        await reader.wait_for(
            lambda rs: [r for r in rs if _parked_by(r, other_group)] or None,
            what="the poison event dead-lettered by the other group",
        )
        dlq_offset = str(parked[0].offset)
        assert await _effect_count(parker, poison.event_id) == 0

        listed, err = await _main(
            capsys, "replay", "--department", service, "--event-id", str(poison.event_id), "--dry-run",
            "--group", group,
            "--kafka-bootstrap-servers", kafka_bootstrap, "--json",
        )  # fmt: skip
        assert (listed["dry_run"], len(listed["replayed"])) == (True, 1)
        assert listed["replayed"][0]["reason"] == "unknown_lead"
        # Each group's dead letter is its own: the replay asks for the parker's only.
        assert [r["consumer_group"] for r in listed["replayed"]] == [group]
        assert "listing 1 dead letters" in err
        before = await _end_offset(kafka_bootstrap, topic)

        unplaceable.clear()  # the fix
        replayed, err = await _main(
            capsys, "replay", "--department", service, "--reason", "unknown_lead",
            "--event-id", str(poison.event_id), "--group", group,
            "--kafka-bootstrap-servers", kafka_bootstrap, "--json",
        )  # fmt: skip
        assert "replaying 1 dead letters" in err
        assert "1/1" in err, "the progress bar reaches the end"
        assert replayed["replayed"][0]["replayed_to"] == f"{topic}[0]@{before}", "a dry run produced nothing"
        assert await eventually(
            lambda: _effect_count(parker, poison.event_id), what="the replayed event handled"
        )

        # The same dead letter again, chosen by its offset range this time: a duplicate.
        again, _ = await _main(
            capsys, "replay", "--department", service, "--from-offset", dlq_offset, "--to-offset", dlq_offset,
            "--kafka-bootstrap-servers", kafka_bootstrap, "--json",
        )  # fmt: skip
        assert [r["event_id"] for r in again["replayed"]] == [str(poison.event_id)]
        sentinel = envelope("lead-after", "after the replays")
        await produce_envelope(kafka_bootstrap, topic, sentinel)
        await eventually(lambda: _effect_count(parker, sentinel.event_id), what="the parker past the replays")
        await eventually(lambda: _effect_count(other, sentinel.event_id), what="the other past the replays")
        assert await _effect_count(parker, poison.event_id) == 1, "the second replay was a duplicate"
        assert await _effect_count(other, poison.event_id) == 0, "the other group skipped both copies"
        assert await _effect_count(other, ok.event_id) == 1
        records = list(await reader.poll())
        assert len([r for r in records if _parked_by(r, group)]) == 1, "nothing dead-lettered again"
        assert len([r for r in records if _parked_by(r, other_group)]) == 1, "nor by the other group"
    finally:
        await parker.stop()
        await other.stop()
        await reader.stop()
