"""A consumer process for the crash test (run as a subprocess).

With ``--crash-on NAME`` it SIGKILLs itself right after the effect of the event
whose payload name is NAME is stored, before its offset can be committed. With
``--crash-inside NAME`` it SIGKILLs itself inside that event's transaction, after its
handler wrote the effect and before the commit (the batch's group transaction, with
crm_platform.consumer's group commit). With ``--deferred`` the handler writes its effect as
a batch would (``Tx.insert_later``: one insert for the batch, written before the commit)
and ``--crash-inside`` kills after that write reached mongod.
Each outcome is appended to ``--outcomes`` so the test can see redeliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crm_contracts import Envelope
from crm_platform.consumer import ConsumerConfig, EventConsumer, Outcome
from crm_platform.mongo import Store, Tx, connect
from reliability.probe import record_effect


class RecordingConsumer(EventConsumer):
    outcomes_file: Path

    async def on_outcome(self, record: Any, outcome: Outcome) -> None:
        name = Envelope.from_bytes(record.value).payload.get("name")
        with self.outcomes_file.open("a") as f:
            f.write(f"{name} {outcome.outcome}\n")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--mongo", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--outcomes", required=True)
    p.add_argument("--crash-on")
    p.add_argument("--crash-inside")
    p.add_argument("--deferred", action="store_true", help="effects inserted with the batch")
    p.add_argument("--instance-id", help="static membership: group.instance.id")
    p.add_argument("--expect", type=int, required=True, help="stop after this many effects")
    args = p.parse_args()

    client = connect(args.mongo, "crash-test")
    store = Store(client, args.database, args.group)

    def maybe_crash(env: Envelope) -> None:
        if args.crash_on and env.payload.get("name") == args.crash_on:
            os.kill(os.getpid(), signal.SIGKILL)

    async def effect_then_maybe_crash(tx: Tx, event: Any, env: Envelope) -> None:
        if args.deferred:
            tx.insert_later("effects", {"_id": str(env.event_id), "name": event.name, "count": 1})
        else:
            await record_effect(tx, event, env)
        if args.crash_inside and args.deferred and env.payload.get("name") == args.crash_inside:
            await tx.flush_inserts()  # the batch's effects so far are in mongod, uncommitted
        if args.crash_inside and env.payload.get("name") == args.crash_inside:
            os.kill(os.getpid(), signal.SIGKILL)  # written in the transaction, never committed

    consumer = RecordingConsumer(
        ConsumerConfig(
            service=args.group,
            group_id=args.group,
            topics=[args.topic],
            bootstrap=args.bootstrap,
            group_instance_id=args.instance_id,
        ),
        store,
        {"lead.captured": effect_then_maybe_crash},
        after_store=maybe_crash,
    )
    consumer.outcomes_file = Path(args.outcomes)
    task = asyncio.create_task(consumer.run())
    while await store.db["effects"].count_documents({}) < args.expect:
        await asyncio.sleep(0.05)
    # Let the final batch's offsets be committed before leaving.
    while consumer.consumer is None or not await _committed_all(consumer):
        await asyncio.sleep(0.05)
    await consumer.stop()
    await task
    await client.close()


async def _committed_all(consumer: EventConsumer) -> bool:
    assert consumer.consumer is not None
    if not consumer.consumer.assignment():  # not joined yet: nothing is committed by us
        return False
    for tp in consumer.consumer.assignment():
        committed = await consumer.consumer.committed(tp)
        if committed is None or committed < (consumer.consumer.highwater(tp) or 0):
            return False
    return True


if __name__ == "__main__":
    asyncio.run(main())
