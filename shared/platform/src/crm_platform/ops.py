"""``crm-ops``: what an operator asks of a running CRM, read-only.

::

    crm-ops dead-letters [--department D ...] [--reason R] [--limit N] [--json]
    crm-ops dead-letter --department D --offset N [--partition P] [--json]
    crm-ops lag [--group-prefix P] [--json]
    crm-ops outbox [--database DB ...] [--json]
    crm-ops replay --department D [--reason R] [--topic T] [--event-id ID] [--group G]
                   [--partition P] [--from-offset N] [--to-offset M] [--dry-run] [--json]

- ``dead-letters`` lists each department's dead letters (``crm.dlq.<department>``) with
  their reasons, where they came from and when they failed, then a count per reason;
  ``dead-letter`` shows one in full (every header, the original bytes).
- ``lag`` shows, for every consumer group the brokers know, each partition's committed
  offset, high watermark and lag.
- ``outbox`` shows each service database's outbox backlog (events stored, not yet
  published) and the age of the oldest.
- ``replay`` produces selected dead letters again onto their original topic, for the
  consumer group that parked them (:mod:`crm_platform.ops_replay`); the only command that
  writes.

Only the Kafka protocol (a consumer without a group, which commits nothing; the admin API's
group listing and committed offsets) and read-only MongoDB queries (a count and one
``find_one`` on ``outbox``), so it needs no more than read access: the brokers from
``KAFKA_BOOTSTRAP_SERVERS`` with the same ``KAFKA_*`` security settings every client reads,
MongoDB from ``MONGODB_URI`` (a user that may read the databases named). Long reads draw a
progress bar on stderr; ``--json`` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_contracts.topics import dead_letter_topic
from pymongo import MongoClient

from crm_platform import ops_replay
from crm_platform.kafka import make_consumer
from crm_platform.kafka_security import KafkaSecurity
from crm_platform.liveness import behind
from crm_platform.mongo import OUTBOX, PENDING_BATCHES

DEPARTMENTS = ("leads", "sales", "service-desk", "analytics")
# The services' own databases that hold an outbox (analytics publishes nothing through one).
OUTBOX_DATABASES = ("leads", "sales", "service_desk")
READ_STALL_SECONDS = 30.0


class OpsError(Exception):
    """A problem to report to the operator in words (exit code 2)."""


class Progress:
    """A one-line progress bar on a stream: ``label [#####.....] 12/40``."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.total, self.width, self.done = label, total, width, 0
        self.stream = stream if stream is not None else sys.stderr
        self._draw()

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        self._draw()

    def finish(self) -> None:
        self.done = self.total
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        filled = self.width if self.total == 0 else self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()


# --- dead letters -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    department: str
    partition: int
    offset: int
    reason: str
    error: str
    consumer_group: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    failed_at: str
    event_type: str | None
    event_id: str | None
    key: str | None
    size: int
    headers: dict[str, str]
    value: str

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["headers"], data["value"]
        return data


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


def _event_fields(raw: bytes | None) -> tuple[str | None, str | None]:
    """The event type and id, if the original bytes are a JSON object that names them."""
    try:
        doc = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    kind, ident = doc.get("event_type"), doc.get("event_id")
    return (kind if isinstance(kind, str) else None, ident if isinstance(ident, str) else None)


def dead_letter(department: str, record: Any) -> DeadLetter:
    """One record of ``crm.dlq.<department>`` as an operator reads it (no I/O)."""
    headers = {str(k): _text(v) for k, v in (record.headers or ())}
    event_type, event_id = _event_fields(record.value)
    return DeadLetter(
        department=department,
        partition=record.partition,
        offset=record.offset,
        reason=headers.get("dlq_reason", "unknown"),
        error=headers.get("dlq_error", ""),
        consumer_group=headers.get("dlq_consumer_group", ""),
        source_topic=headers.get("dlq_source_topic", ""),
        source_partition=_int(headers.get("dlq_source_partition", "")),
        source_offset=_int(headers.get("dlq_source_offset", "")),
        failed_at=headers.get("dlq_failed_at", ""),
        event_type=event_type,
        event_id=event_id,
        key=None if record.key is None else _text(record.key),
        size=len(record.value or b""),
        headers=headers,
        value=_text(record.value),
    )


def reasons(letters: Iterable[DeadLetter]) -> dict[str, dict[str, int]]:
    """Dead letters counted per department and reason."""
    counts: dict[str, Counter[str]] = {}
    for letter in letters:
        counts.setdefault(letter.department, Counter())[letter.reason] += 1
    return {dept: dict(sorted(c.items())) for dept, c in sorted(counts.items())}


async def _assign_from_start(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, tuple[int, int]]:
    """Assigns every partition of ``topic`` from its first offset; returns (first, end) per partition."""
    await consumer.topics()
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise OpsError(f"topic {topic} does not exist on the brokers")
    partitions = [TopicPartition(topic, p) for p in sorted(ids)]
    consumer.assign(partitions)
    first = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    await consumer.seek_to_beginning(*partitions)
    return {tp: (first[tp], end[tp]) for tp in partitions}


async def _behind(consumer: AIOKafkaConsumer, bounds: dict[TopicPartition, tuple[int, int]]) -> bool:
    for tp, (_, end) in bounds.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def read_dead_letters(
    bootstrap: str, department: str, stream: TextIO | None = None
) -> list[DeadLetter]:
    """Every dead letter now in ``crm.dlq.<department>``, read without a group (commits nothing)."""
    return [letter for letter, _ in await read_dead_letter_records(bootstrap, department, stream)]


async def read_dead_letter_records(
    bootstrap: str, department: str, stream: TextIO | None = None
) -> list[tuple[DeadLetter, ConsumerRecord[Any, Any]]]:
    """Each dead letter with its raw record (the bytes and headers a replay produces again)."""
    topic = dead_letter_topic(department)
    consumer = make_consumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        bounds = await _assign_from_start(consumer, topic)
        progress = Progress(f"reading {topic}", sum(end - first for first, end in bounds.values()), stream)
        letters: list[tuple[DeadLetter, ConsumerRecord[Any, Any]]] = []
        last_read = time.monotonic()
        while await _behind(consumer, bounds):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                letters.extend((dead_letter(department, r), r) for r in records if r.offset < bounds[tp][1])
                progress.advance(len(records))
                last_read = time.monotonic()
            if time.monotonic() - last_read > READ_STALL_SECONDS:
                raise OpsError(f"{topic}: nothing read for {READ_STALL_SECONDS:.0f} s before its end")
        progress.finish()
        return sorted(letters, key=lambda pair: (pair[0].partition, pair[0].offset))
    finally:
        await consumer.stop()


# --- consumer group lag -------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int
    start: int = 0  # the log's start: records below it are gone (retention, delete-records)

    @property
    def lag(self) -> int:
        return behind(self.committed, self.end, self.start)


async def _group_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    listed = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in listed.items() if meta is not None and meta.offset >= 0}


async def read_lag(
    bootstrap: str, group_prefix: str = "", stream: TextIO | None = None
) -> list[PartitionLag]:
    """Committed offset, high watermark and log start of every partition each consumer group has
    committed on (the lag counts from the log start when the committed offset is below it)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="crm-ops", **KafkaSecurity.from_env().aiokafka_kwargs()
    )
    ends = make_consumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    try:
        await ends.start()
        groups = sorted(
            {str(g[0]) for g in await admin.list_consumer_groups() if str(g[0]).startswith(group_prefix)}
        )
        progress = Progress("reading consumer groups", len(groups), stream)
        found: list[PartitionLag] = []
        for group in groups:
            committed = await _group_offsets(admin, group)
            high = await ends.end_offsets(sorted(committed)) if committed else {}
            starts = await ends.beginning_offsets(sorted(committed)) if committed else {}
            found.extend(
                PartitionLag(group, tp.topic, tp.partition, offset, high[tp], starts[tp])
                for tp, offset in committed.items()
            )
            progress.advance()
        progress.finish()
        return sorted(found, key=lambda p: (p.group, p.topic, p.partition))
    finally:
        await ends.stop()
        await admin.close()


# --- outbox backlog -----------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    database: str
    pending: int
    oldest_created_at: str | None
    oldest_age_seconds: float | None


def _age(created: Any, now: datetime) -> tuple[str | None, float | None]:
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created)
        except ValueError:
            return created, None
    if not isinstance(created, datetime):
        return None, None
    if created.tzinfo is None:  # PyMongo returns naive UTC datetimes by default
        created = created.replace(tzinfo=UTC)
    return created.isoformat(), round((now - created).total_seconds(), 1)


def read_outbox(uri: str, databases: Sequence[str], stream: TextIO | None = None) -> list[Backlog]:
    """Each database's unpublished outbox events (read-only: a count and the oldest one)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000, timeoutMS=30_000)
    try:
        progress = Progress("reading outboxes", len(databases), stream)
        found = []
        for name in databases:
            outbox = client[name][OUTBOX]
            # A batch row (crm_platform.mongo.outbox_rows) counts its events (as outbox.pending_events).
            pending = outbox.count_documents({"published": False})
            pending += sum(int(b["count"]) - 1 for b in outbox.find(PENDING_BATCHES, {"count": 1, "_id": 0}))
            oldest = outbox.find_one({"published": False}, sort=[("_id", 1)], projection={"created_at": 1})
            created, age = _age((oldest or {}).get("created_at"), datetime.now(UTC))
            found.append(Backlog(name, pending, created, age))
            progress.advance()
        progress.finish()
        return found
    finally:
        client.close()


# --- command line -------------------------------------------------------------------------


def _table(rows: list[list[Any]], header: list[str], out: TextIO) -> None:
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out.write(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _env(name: str, given: str | None) -> str:
    value = given or os.environ.get(name)
    if not value:
        raise OpsError(f"set {name} (or pass --{name.lower().replace('_', '-')})")
    return value


async def _dead_letters(args: argparse.Namespace, out: TextIO) -> int:
    bootstrap = _env("KAFKA_BOOTSTRAP_SERVERS", args.kafka_bootstrap_servers)
    letters: list[DeadLetter] = []
    for department in args.department or DEPARTMENTS:
        letters.extend(await read_dead_letters(bootstrap, department))
    if args.reason:
        letters = [d for d in letters if d.reason in args.reason]
    shown = letters[-args.limit :] if args.limit else letters
    if args.json:
        json.dump({"dead_letters": [d.summary() for d in shown], "reasons": reasons(letters)}, out, indent=2)
        out.write("\n")
        return 0
    header = ["department", "partition", "offset", "reason", "event_type", "source", "failed_at", "error"]
    rows = [
        [
            d.department,
            d.partition,
            d.offset,
            d.reason,
            d.event_type,
            f"{d.source_topic}[{d.source_partition}]@{d.source_offset}",
            d.failed_at,
            d.error[:80],
        ]
        for d in shown
    ]
    _table(rows, header, out)
    out.write("\nper reason:\n")
    _table(
        [[dept, r, n] for dept, c in reasons(letters).items() for r, n in c.items()],
        ["department", "reason", "count"],
        out,
    )
    return 0


async def _one_dead_letter(args: argparse.Namespace, out: TextIO) -> int:
    bootstrap = _env("KAFKA_BOOTSTRAP_SERVERS", args.kafka_bootstrap_servers)
    letters = await read_dead_letters(bootstrap, args.department)
    found = [
        d
        for d in letters
        if d.offset == args.offset and (args.partition is None or d.partition == args.partition)
    ]
    if not found:
        raise OpsError(f"no dead letter at offset {args.offset} of {dead_letter_topic(args.department)}")
    letter = found[0]
    if args.json:
        json.dump(asdict(letter), out, indent=2)
        out.write("\n")
        return 0
    for name, value in letter.summary().items():
        out.write(f"{name}: {'' if value is None else value}\n")
    out.write("headers:\n")
    for name, value in letter.headers.items():
        out.write(f"  {name}: {value}\n")
    out.write(f"value ({letter.size} bytes):\n{letter.value}\n")
    return 0


async def _lag(args: argparse.Namespace, out: TextIO) -> int:
    bootstrap = _env("KAFKA_BOOTSTRAP_SERVERS", args.kafka_bootstrap_servers)
    lags = await read_lag(bootstrap, args.group_prefix)
    if args.json:
        json.dump([{**asdict(p), "lag": p.lag} for p in lags], out, indent=2)
        out.write("\n")
        return 0
    rows = [[p.group, p.topic, p.partition, p.committed, p.start, p.end, p.lag] for p in lags]
    _table(rows, ["group", "topic", "partition", "committed", "start", "end", "lag"], out)
    totals: Counter[str] = Counter()
    for p in lags:
        totals[p.group] += p.lag
    out.write("\nper group:\n")
    _table([[g, n] for g, n in sorted(totals.items())], ["group", "lag"], out)
    return 0


async def _replay(args: argparse.Namespace, out: TextIO) -> int:
    bootstrap = _env("KAFKA_BOOTSTRAP_SERVERS", args.kafka_bootstrap_servers)
    wanted = ops_replay.selection(args)
    chosen = [
        pair for pair in await read_dead_letter_records(bootstrap, args.department) if wanted.matches(pair[0])
    ]
    verb = "listing" if args.dry_run else "replaying"
    progress = Progress(f"{verb} {len(chosen)} dead letters", len(chosen))
    report = await ops_replay.replay(bootstrap, chosen, dry_run=args.dry_run, progress=progress)
    ops_replay.write_report(report, out, args.json)
    return 0


def _outbox(args: argparse.Namespace, out: TextIO) -> int:
    backlog = read_outbox(_env("MONGODB_URI", args.mongodb_uri), args.database or OUTBOX_DATABASES)
    if args.json:
        json.dump([asdict(b) for b in backlog], out, indent=2)
        out.write("\n")
        return 0
    rows = [[b.database, b.pending, b.oldest_created_at, b.oldest_age_seconds] for b in backlog]
    _table(rows, ["database", "pending", "oldest", "oldest age (s)"], out)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="crm-ops", description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = top.add_subparsers(dest="command", required=True)
    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument("--kafka-bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    kafka.add_argument("--json", action="store_true", help="machine-readable output")
    letters = commands.add_parser(
        "dead-letters", parents=[kafka], help="list dead letters with their reasons"
    )
    letters.add_argument(
        "--department", action="append", help=f"repeatable; default: {', '.join(DEPARTMENTS)}"
    )
    letters.add_argument("--reason", action="append", help="only these reasons (repeatable)")
    letters.add_argument("--limit", type=int, default=0, help="only the last N")
    one = commands.add_parser("dead-letter", parents=[kafka], help="one dead letter in full")
    one.add_argument("--department", required=True, help="leads, sales, service-desk or analytics")
    one.add_argument("--offset", type=int, required=True)
    one.add_argument("--partition", type=int)
    lag = commands.add_parser("lag", parents=[kafka], help="each consumer group's lag per partition")
    lag.add_argument("--group-prefix", default="", help="only groups whose id starts with this")
    outbox = commands.add_parser("outbox", help="the outbox backlog per service database")
    outbox.add_argument("--mongodb-uri", help="default: $MONGODB_URI")
    outbox.add_argument(
        "--database", action="append", help=f"repeatable; default: {', '.join(OUTBOX_DATABASES)}"
    )
    outbox.add_argument("--json", action="store_true", help="machine-readable output")
    ops_replay.add_parser(commands, kafka)
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        if args.command == "outbox":
            return _outbox(args, stream)
        commands = {
            "dead-letters": _dead_letters,
            "dead-letter": _one_dead_letter,
            "lag": _lag,
            "replay": _replay,
        }
        run = commands[args.command]
        return asyncio.run(run(args, stream))
    except OpsError as problem:
        sys.stderr.write(f"crm-ops: {problem}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
