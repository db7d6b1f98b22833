"""A process that stopped during a bench phase is named, not left out of a figure silently.

The idle figure is the sum of each running process's CPU: a service that had exited (the
twentieth session saw the analytics worker missing from two runs' idle figures) idles at 0%,
and the sum without it was reported as met. bench/run_bench.py's ``not_running`` names each
started process that has stopped, how it ended and its log's last lines (a phase's logs are
rewritten by the next), and the idle target is then "not measured" rather than met.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import run_bench
from crm_platform.devinfra.launcher import Platform


def _info(msg: str) -> str:
    return json.dumps({"level": "info", "msg": msg})


def test_a_stopped_process_is_named_with_its_exit_and_its_logs_last_lines(tmp_path: Path) -> None:
    """Its last lines, the lines above info before them (the cause comes before a worker's
    shutdown lines) and its whole log kept: the next phase rewrites the log."""
    platform = Platform(kafka_bootstrap="127.0.0.1:1", mongodb_uri="mongodb://127.0.0.1:1", logdir=tmp_path)
    shutdown = [_info(f"Stopping {i}") for i in range(8)]
    cause = ['{"level": "error", "msg": "consumer stalled"}', "Traceback (most recent call last):"]
    lines = [_info("ready"), *cause, *shutdown, "analytics agent crash-looping (last: boom)"]
    platform.logfile("analytics-worker").write_text("\n".join(lines) + "\n")
    stopped = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    running = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        stopped.wait(timeout=30)
        platform.procs = {"analytics-worker": stopped, "leads": running}
        found = run_bench.not_running(platform, kept=tmp_path / "kept")
        assert list(found) == ["analytics-worker"]
        said = found["analytics-worker"]
        assert said.startswith("exit code 3")
        assert "crash-looping (last: boom)" in said
        assert "consumer stalled" in said
        assert "Traceback" in said
        assert "ready" not in said  # info lines before the tail are left out
        assert "Stopping 0" not in said
        assert (tmp_path / "kept" / "analytics-worker.log").read_text().splitlines() == lines
    finally:
        running.communicate(b"\n", timeout=30)


def test_the_idle_figure_without_a_stopped_process_is_not_called_met() -> None:
    idle = {"leads": 3.0, "sales": 2.0, "gateway": 1.0}
    met = run_bench._resource_targets({"idle_cpu_percent": idle})
    assert [(t.name, t.met) for t in met] == [("idle platform CPU", True)]
    [target] = run_bench._resource_targets(
        {"idle_cpu_percent": idle, "not_running": {"analytics-worker": "exit code 3"}}
    )
    assert target.met is None
    assert "without analytics-worker" in target.figure


def test_the_slowest_handoffs_are_named_with_their_time_in_the_window() -> None:
    """The 25/s window's tail, placed in time: a p99 made of the window's first seconds (the
    figure before it still settling) reads differently from one spread over the window."""
    timed = [(100.0 + i / 25, 0.020) for i in range(200)]
    timed[3] = (timed[3][0], 0.480)
    timed[150] = (timed[150][0], 0.090)
    assert run_bench.slowest_by_time(timed) == "0.1: 480.0, 6.0: 90.0"
    assert run_bench.slowest_by_time([]) == "none"
    assert run_bench.slowest_by_time([(5.0, 0.01)], share=0.01) == "0.0: 10.0"
