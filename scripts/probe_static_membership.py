"""Does a consumer SIGKILLed and restarted get its partitions back without waiting?

Kafka's static membership (``group.instance.id``, KIP-345; ``CRM_CONSUMER_INSTANCE_ID``
in the services, one stable id per replica) lets a restarted member take its own
place in the group at once. Without it the broker keeps the dead member until its
session times out, and the restarted process waits for that rebalance. This probe
measures both on whatever broker ``--bootstrap`` points at (the embedded one, a
second implementation such as Tansu, or a real Kafka cluster):

    python scripts/probe_static_membership.py --bootstrap 127.0.0.1:9092

For each mode it creates a fresh 3-partition topic and group, starts a member (a
child process using the platform's ``make_consumer``), waits until it consumed,
SIGKILLs it, produces more and restarts it with the same command line, then
reports how long each start took until records flowed. A static member's restart
should take about as long as a first start; a dynamic one's about the session
timeout longer. Exit status 1 when static membership did not beat the session timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

SESSION_TIMEOUT_MS = 45_000  # the platform's consumers use aiokafka's default too


async def member(bootstrap: str, topic: str, group: str, instance_id: str | None, out: Path) -> None:
    """The child: consume, commit, and write one line per batch to ``out``."""
    from crm_platform.kafka import make_consumer

    consumer = make_consumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        group_instance_id=instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    await consumer.start()
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        count = sum(len(records) for records in batch.values())
        if count:
            await consumer.commit()
            with out.open("a") as f:
                f.write(f"consumed {count}\n")


def spawn(
    bootstrap: str, topic: str, group: str, instance_id: str | None, out: Path
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        __file__,
        "--bootstrap",
        bootstrap,
        "--member",
        topic,
        group,
        instance_id or "-",
        str(out),
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seconds_until_consumed(out: Path, deadline: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if out.exists() and "consumed" in out.read_text():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


async def produce(bootstrap: str, topic: str, count: int) -> None:
    # Not idempotent: some Kafka-protocol brokers (Tansu) refuse the idempotent producer.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **_security())
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"record-{i}".encode(), key=str(i).encode())
    finally:
        await producer.stop()


async def one_mode(bootstrap: str, static: bool, workdir: Path) -> tuple[float | None, float | None]:
    """(first start, restart after SIGKILL) in seconds until the member consumed."""
    tag = f"{'static' if static else 'dynamic'}-{time.time_ns()}"
    topic, group = f"probe-membership-{tag}", f"probe-membership-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_security())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    instance_id = "probe-member-0" if static else None
    deadline = SESSION_TIMEOUT_MS / 1000 * 4
    timings: list[float | None] = []
    for round_ in ("first", "restart"):
        await produce(bootstrap, topic, 30)
        out = workdir / f"{tag}-{round_}.out"
        proc = spawn(bootstrap, topic, group, instance_id, out)
        try:
            timings.append(seconds_until_consumed(out, deadline))
        finally:
            proc.send_signal(signal.SIGKILL)  # never leaves the group: the case under test
            proc.wait()
    return timings[0], timings[1]


def _security() -> dict[str, object]:
    from crm_platform.kafka_security import KafkaSecurity

    return KafkaSecurity.from_env().aiokafka_kwargs()


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:5.1f} s"


async def probe(bootstrap: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            mode: await one_mode(bootstrap, mode == "static", Path(tmp)) for mode in ("static", "dynamic")
        }
    print(f"broker {bootstrap}, session timeout {SESSION_TIMEOUT_MS / 1000:.0f} s")
    print("membership  first start  restart after SIGKILL")
    for mode, (first, restart) in results.items():
        print(f"{mode:<10}  {_fmt(first):>11}  {_fmt(restart):>20}")
    first, restart = results["static"]
    ok = first is not None and restart is not None and restart < first + SESSION_TIMEOUT_MS / 1000
    print(
        "static membership: the restarted member took its own place"
        if ok
        else "static membership: NOT honoured"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument(
        "--member", nargs=4, metavar=("TOPIC", "GROUP", "INSTANCE_ID", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.member:
        topic, group, instance_id, out = args.member
        asyncio.run(
            member(args.bootstrap, topic, group, None if instance_id == "-" else instance_id, Path(out))
        )
        return
    sys.exit(asyncio.run(probe(args.bootstrap)))


if __name__ == "__main__":
    main()
