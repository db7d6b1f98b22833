"""``crm-analytics-ops``: analytics' own operator commands (``python -m analytics.cli``).

::

    crm-analytics-ops rebuild [--dry-run] [--json]

``rebuild`` recomputes analytics' figures from the log alone: it replays every topic the
worker folds (``analytics.worker.SOURCE_TOPICS``) from its first offset to its current end
with the worker's own engine and classification (``analytics.reconcile.replay_log``, what
the worker's reconciliation uses), compares the result with the snapshot the API serves,
and (unless ``--dry-run``) publishes the rebuilt figures as the latest snapshot
(``worker: "rebuild"``), so the API answers with the log's figures at once. A progress
bar on stderr follows the replay; ``--json`` prints the report on stdout.

It lives in the analytics service, not in ``crm-ops``, because it needs analytics' engine
and the platform never imports a service. It reads the brokers and the analytics database
from the same settings as the worker (``KAFKA_BOOTSTRAP_SERVERS`` and the ``KAFKA_*``
security settings, ``MONGODB_URI``, ``MONGODB_DATABASE``). The running worker is left
alone: its reconciliation merges whatever its own tables lack from the log, and it writes
a snapshot again when its figures change. When its tables hold facts the log does not
justify (a fold fixed since), restart the worker with a new ``CRM_ANALYTICS_APP_ID``: it
replays its topics from the start into fresh tables, and this command's snapshot serves
the log's figures meanwhile (deploy/README.md, "Rebuilding analytics").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from aiokafka import TopicPartition
from crm_contracts import utcnow
from crm_platform.kafka import make_consumer
from crm_platform.mongo import connect
from crm_platform.ops import Progress

from analytics import handlers
from analytics.domain.engine import figure_values
from analytics.domain.figures import Figures
from analytics.domain.snapshot import Snapshot
from analytics.reconcile import replay_log
from analytics.settings import AnalyticsSettings
from analytics.store import MongoSnapshots

REBUILD_WORKER = "rebuild"


async def log_bounds(
    bootstrap: str, topics: Sequence[str]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """First and end offsets of every partition of ``topics`` (the log as it is now)."""
    consumer = make_consumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        first = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        return dict(first), dict(end)
    finally:
        await consumer.stop()


def _snapshot_values(snapshot: Snapshot) -> dict[str, int]:
    return {f"funnel:{stage}": int(count) for stage, count in snapshot.funnel["stages"].items()}


async def rebuild(
    settings: AnalyticsSettings, *, dry_run: bool, stream: TextIO | None = None
) -> dict[str, Any]:
    """Replay the log into fresh figures; publish them unless ``dry_run``. Returns the report."""
    from analytics.worker import SOURCE_TOPICS  # faust: imported only when the command runs

    bootstrap = settings.kafka_bootstrap_servers
    first, end = await log_bounds(bootstrap, SOURCE_TOPICS)
    progress = Progress("replaying the log", sum(end[tp] - first[tp] for tp in end), stream)
    state, scanned = await replay_log(bootstrap, end, on_records=progress.advance)
    progress.finish()
    figures: Figures = state.figures
    client = connect(settings.mongodb_uri, f"{settings.service_name}-ops")
    try:
        snapshots = MongoSnapshots(client[settings.database_name])
        before = await handlers.latest_snapshot(snapshots)
        rebuilt = Snapshot.of(figures, worker=REBUILD_WORKER, at=utcnow())
        if not dry_run:
            await snapshots.save(rebuilt)
    finally:
        await client.close()
    was = _snapshot_values(before)
    now = {k: v for k, v in figure_values(figures).items() if k.startswith("funnel:")}
    replaced_at = before.updated_at.isoformat() if before.updated_at else None
    return {
        "dry_run": dry_run,
        "scanned_events": scanned,
        "published": not dry_run,
        "replaced_snapshot": {"worker": before.worker, "updated_at": replaced_at},
        "funnel": {k: {"was": was.get(k, 0), "now": now.get(k, 0)} for k in sorted(set(was) | set(now))},
        "channels": rebuilt.channels,
    }


def _write(report: dict[str, Any], out: TextIO, as_json: bool) -> None:
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
        return
    verb = "would publish" if report["dry_run"] else "published"
    out.write(f"replayed {report['scanned_events']} events; {verb} the rebuilt figures\n")
    for name, values in report["funnel"].items():
        out.write(f"  {name}: {values['was']} -> {values['now']}\n")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="crm-analytics-ops", description="analytics' operator commands")
    commands = top.add_subparsers(dest="command", required=True)
    one = commands.add_parser("rebuild", help="rebuild the figures from the log and publish them")
    one.add_argument("--dry-run", action="store_true", help="compare only, publish nothing")
    one.add_argument("--json", action="store_true", help="machine-readable output")
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    settings = AnalyticsSettings()  # from the environment, like the worker's
    report = asyncio.run(rebuild(settings, dry_run=args.dry_run))
    _write(report, out if out is not None else sys.stdout, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
