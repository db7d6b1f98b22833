"""``crm-ops replay``: selected dead letters back onto their original topic, after a fix.

::

    crm-ops replay --department D [--reason R ...] [--topic T ...] [--event-id ID ...]
                   [--group G ...] [--partition P] [--from-offset N] [--to-offset M]
                   [--dry-run] [--json]

Each selected record of ``crm.dlq.<department>`` is produced again, byte for byte with its
key, onto the topic it was dead-lettered from (``dlq_source_topic``), with its original
headers (the trace context included) minus the ``dlq_*`` ones, plus

- ``crm_replay_for``: the consumer group that parked it (``dlq_consumer_group``). Only that
  group handles the copy; every other group on the topic (other departments, analytics)
  already handled the original and skips it (``crm_platform.dead_letters.skips_replay``);
- ``crm_replayed_from``: ``crm.dlq.<department>[partition]@offset``, for the logs.

So a replay goes through the department's normal consumer path: classification, the
processed-events ledger, the handler, the receipt. It is idempotent: an event whose effect
is already stored (replayed twice, or processed by a re-send meanwhile) is a duplicate for
the ledger and changes nothing; a record that still fails is dead-lettered again, with its
reason. ``--dry-run`` lists what would be replayed and produces nothing. A dead letter without
a source topic (or one the tool refuses to write to: a dead-letter topic) is listed as skipped.
The producer is idempotent with ``acks=all``; the ops user needs write access to the source
topics (deploy/README.md, Kafka users and ACLs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from aiokafka import ConsumerRecord

from crm_platform.dead_letters import REPLAY_FOR, REPLAYED_FROM
from crm_platform.kafka import make_producer

DLQ_PREFIX = "crm.dlq."


@dataclass(frozen=True)
class Selection:
    """Which dead letters of one department to replay (every given criterion must hold)."""

    reasons: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive

    def matches(self, letter: Any) -> bool:
        """``letter`` is a :class:`crm_platform.ops.DeadLetter` (duck-typed: no import cycle)."""
        checks = (
            not self.reasons or letter.reason in self.reasons,
            not self.topics or letter.source_topic in self.topics,
            not self.event_ids or letter.event_id in self.event_ids,
            not self.groups or letter.consumer_group in self.groups,
            self.partition is None or letter.partition == self.partition,
            self.from_offset is None or letter.offset >= self.from_offset,
            self.to_offset is None or letter.offset <= self.to_offset,
        )
        return all(checks)


@dataclass
class ReplayReport:
    dry_run: bool
    replayed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def replay_headers(record: ConsumerRecord[Any, Any], group: str, origin: str) -> list[tuple[str, bytes]]:
    """The original headers minus ``dlq_*`` and earlier replay marks, plus the replay's own."""
    kept = [
        (str(k), bytes(v or b""))
        for k, v in record.headers or ()
        if not str(k).startswith("dlq_") and k not in (REPLAY_FOR, REPLAYED_FROM)
    ]
    return [*kept, (REPLAY_FOR, group.encode()), (REPLAYED_FROM, origin.encode())]


def why_not(letter: Any) -> str | None:
    """Why a selected dead letter cannot be replayed, or None."""
    if not letter.source_topic:
        return "no source topic in its headers"
    if letter.source_topic.startswith(DLQ_PREFIX):
        return f"its source {letter.source_topic} is a dead-letter topic"
    if not letter.consumer_group:
        return "no consumer group in its headers"
    return None


async def replay(
    bootstrap: str,
    letters: Sequence[tuple[Any, ConsumerRecord[Any, Any]]],
    *,
    dry_run: bool,
    progress: Any,
) -> ReplayReport:
    """Produce each (letter, raw record) back onto its source topic; ``progress`` advances per record."""
    report = ReplayReport(dry_run=dry_run)
    producer = None if dry_run else make_producer(bootstrap, "crm-ops-replay")
    if producer is not None:
        await producer.start()
    try:
        for letter, record in letters:
            summary = letter.summary()
            reason = why_not(letter)
            if reason is not None:
                report.skipped.append({**summary, "skipped_because": reason})
            elif producer is None:
                report.replayed.append(summary)
            else:
                origin = f"{record.topic}[{record.partition}]@{record.offset}"
                meta = await producer.send_and_wait(
                    letter.source_topic,
                    record.value,
                    key=record.key,
                    headers=replay_headers(record, letter.consumer_group, origin),
                )
                report.replayed.append(
                    {**summary, "replayed_to": f"{meta.topic}[{meta.partition}]@{meta.offset}"}
                )
            progress.advance()
    finally:
        if producer is not None:
            await producer.stop()
    progress.finish()
    return report


def add_parser(commands: Any, kafka: argparse.ArgumentParser) -> None:
    one = commands.add_parser(
        "replay", parents=[kafka], help="replay selected dead letters onto their original topic"
    )
    one.add_argument("--department", required=True, help="leads, sales, service-desk or analytics")
    one.add_argument("--reason", action="append", help="only these reasons (repeatable)")
    one.add_argument("--topic", action="append", help="only those dead-lettered from these topics")
    one.add_argument("--event-id", action="append", help="only these event ids (repeatable)")
    one.add_argument("--group", action="append", help="only those parked by these consumer groups")
    one.add_argument("--partition", type=int, help="only this partition of the dead-letter topic")
    one.add_argument("--from-offset", type=int, help="dead-letter topic offsets from (inclusive)")
    one.add_argument("--to-offset", type=int, help="dead-letter topic offsets to (inclusive)")
    one.add_argument("--dry-run", action="store_true", help="list what would be replayed, produce nothing")


def selection(args: argparse.Namespace) -> Selection:
    return Selection(
        reasons=frozenset(args.reason or ()),
        topics=frozenset(args.topic or ()),
        event_ids=frozenset(args.event_id or ()),
        groups=frozenset(args.group or ()),
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
    )


def write_report(report: ReplayReport, out: TextIO, as_json: bool) -> None:
    if as_json:
        json.dump(asdict(report), out, indent=2)
        out.write("\n")
        return
    verb = "would replay" if report.dry_run else "replayed"
    for item in report.replayed:
        where = item.get("replayed_to") or item["source_topic"]
        out.write(f"{verb} {item['department']} [{item['partition']}]@{item['offset']} ")
        out.write(f"{item['event_type'] or '?'} {item['event_id'] or '?'} ({item['reason']}) -> {where}\n")
    for item in report.skipped:
        out.write(f"skipped [{item['partition']}]@{item['offset']}: {item['skipped_because']}\n")
    out.write(f"{len(report.replayed)} {verb}, {len(report.skipped)} skipped\n")
