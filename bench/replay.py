"""The analytics worker's replay alone, several times over the same log: A/B in the same minutes.

``.venv/bin/python bench/replay.py`` starts a fresh broker and mongod (the bench's ports),
fills the log as the backlog phase of ``make bench`` does (``BENCH_BACKLOG_EVENTS``
lead-qualified handoffs drained by sales: the handoffs, sales' receipts and its own events),
adds ``BENCH_REPLAY_HISTORY`` journeys straight onto the topics (4 folded events each; 10,000 in
quick mode), then replays the analytics worker's topics ``BENCH_REPLAY_RUNS`` times (3), each with a fresh
application id (fresh consumer group and tables), and prints events/s and CPU ms per event
(worker, broker, mongod) of each run: the folds counted by the worker itself, from the first
to the last (``scenarios.analytics_replay``).

``BENCH_REPLAY_TREES=/path/a,/path/b`` alternates the worker's code between checkouts (each
run's worker gets ``PYTHONPATH=<tree>/services/analytics/src:<tree>/shared/platform/src:
<tree>/shared/contracts/src``): A, B, A, B... on the same log, so a change is measured against
its "before" under the same load. ``BENCH_PROFILE=1`` records each run's worker with py-spy
under ``bench/results/profile/replay-<n>/``. ``BENCH_REPLAY_KEEP=1`` leaves the broker and
mongod running with the filled log, and a later run with it set replays that log again
without filling it; a run without it stops them at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crm_platform.devinfra.launcher import Platform
from crm_platform.devinfra.resolve import resolve
from crm_platform.kafka import pace_empty_fetches
from crm_platform.testing import idle_backoff_ms
from run_bench import HOME, ROOT, _configure_sales, _platform, fresh_infra, parse_args
from scenarios import analytics_replay, backlog_drain, produce_history, say
from system import infra_pids, load_average


def tree_env(tree: str) -> dict[str, str]:
    """The worker's environment to run ``tree``'s code instead of this checkout's."""
    if not tree:
        return {}
    parts = ("services/analytics/src", "shared/platform/src", "shared/contracts/src")
    return {"PYTHONPATH": os.pathsep.join(str(Path(tree) / p) for p in parts)}


async def fill(platform: Platform, mongodb_uri: str, n: int, history: int) -> None:
    """The backlog phase's log: ``n`` handoffs, drained by sales (its receipts and events), and
    ``history`` journeys produced straight onto the topics (``BENCH_REPLAY_HISTORY``)."""
    platform.start()
    try:
        platform.wait_ready(timeout=120)
        await _configure_sales(platform)
        await backlog_drain(platform, mongodb_uri, n=n, max_seconds=600)
    finally:
        platform.stop()
    if history:
        say(f"replay history: {await produce_history(platform.kafka_bootstrap, history)} more events")


async def main() -> int:
    args = parse_args()
    runs = int(os.environ.get("BENCH_REPLAY_RUNS", "3"))
    trees = os.environ.get("BENCH_REPLAY_TREES", "").split(",")
    keep = os.environ.get("BENCH_REPLAY_KEEP") == "1"
    filled = HOME / "replay-filled"
    reuse = keep and filled.exists()
    infra = resolve(HOME, args.kafka_port, args.mongo_port) if reuse else fresh_infra(args)
    idle = idle_backoff_ms(infra)
    pace_empty_fetches(idle)
    results: list[dict[str, Any]] = []
    args.services = ("sales", "gateway")
    platform = _platform(args, infra.kafka_bootstrap, infra.mongodb_uri, idle, "bench_replay_")
    try:
        if not reuse:
            await fill(platform, infra.mongodb_uri, args.backlog_events, args.replay_history)
            filled.write_text(str(args.backlog_events))
        from analytics.worker import SOURCE_TOPICS

        for n in range(runs):
            tree = trees[n % len(trees)]
            say(f"replay {n + 1}/{runs}: {tree or 'this checkout'}; load average {load_average()}")
            outdir = ROOT / f"bench/results/profile/replay-{n + 1}"
            replay = await analytics_replay(
                platform,
                SOURCE_TOPICS,
                max_seconds=args.replay_max_seconds,
                extra_env=tree_env(tree),
                others=infra_pids(HOME),
                profile_dir=outdir,
                drop_changelogs=True,
            )
            results.append({"tree": tree, "load_average": load_average(), **replay})
    finally:
        if not keep:
            infra.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
