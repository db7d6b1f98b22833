"""How the analytics worker stops when it gives up (a crash loop, a failed store): injectable.
In production a SIGTERM to its own process (faust's worker stops gracefully, main() exits 1); in
the analytics tests a stop that records the reason and fails the test (conftest's
``worker_stops``), so that a worker crash-looping in a test does not end the whole run."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]

# The production stop, in a process of its own: the worker's default ``give_up`` ends in a
# SIGTERM to that process (here caught, to say so).
_PRODUCTION_STOP = """
import os, signal, sys
from analytics.settings import AnalyticsSettings
from analytics.worker import AnalyticsWorker
signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM", flush=True), os._exit(7)))
worker = AnalyticsWorker(AnalyticsSettings(
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", MONGODB_URI="mongodb://127.0.0.1:9",
    CRM_ANALYTICS_APP_ID="crm-analytics-unit-stop"))
worker.give_up(RuntimeError("changelog unavailable"))
signal.pause()  # the signal is delivered to this thread; without it, wait (the test's timeout)
"""


def _settings() -> AnalyticsSettings:
    return AnalyticsSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MONGODB_URI="mongodb://127.0.0.1:9",
        CRM_ANALYTICS_APP_ID=f"crm-analytics-unit-{uuid.uuid4().hex[:8]}",
    )


def test_a_worker_crash_looping_in_a_test_fails_that_test_by_name_and_the_run_goes_on() -> None:
    """A pytest of its own over ``crash_looping_worker.py``: its first test's worker gives up. The
    run must end on its own with a report (exit 1, not killed by SIGTERM: -15), the first test
    failed with the reason, the second passed."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:schemathesis", str(HERE / "crash_looping_worker.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    said = run.stdout + run.stderr
    assert run.returncode == 1, f"the run did not end with a report (exit {run.returncode}):\n{said}"
    assert "the analytics worker gave up in this test" in said, said
    assert "stale() takes 1 positional argument but 3 were given" in said, (
        "the reason, with the failing call: " + said
    )
    assert "ERROR at teardown of test_a_worker_that_gives_up" in said, said
    assert "the run went on" in said, said
    assert "2 passed, 1 error" in said, said


def test_a_worker_gives_up_once_through_the_stop_it_was_given() -> None:
    stops: list[BaseException | None] = []
    worker = AnalyticsWorker(_settings(), stop=stops.append)
    worker.give_up(RuntimeError("first"))
    worker.give_up(RuntimeError("second"))
    assert [str(reason) for reason in stops] == ["first"]
    assert worker.crash_looping, "main() exits with EXIT_CRASH_LOOP"


def test_a_worker_given_no_stop_uses_the_modules(worker_stops: list[BaseException | None]) -> None:
    """Without a stop of its own, the worker stops through ``analytics.worker.stop_the_process``
    (looked up when it gives up: here the conftest's recorder, in production the SIGTERM)."""
    worker = AnalyticsWorker(_settings())
    worker.give_up(RuntimeError("changelog unavailable"))
    assert [str(reason) for reason in worker_stops] == ["changelog unavailable"]
    worker_stops.clear()  # expected here: not a failure of this test


def test_the_production_stop_is_a_sigterm_to_the_workers_own_process() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _PRODUCTION_STOP], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stdout.strip()) == (7, "SIGTERM"), run.stdout + run.stderr
