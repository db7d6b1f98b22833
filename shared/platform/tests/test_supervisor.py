"""The `make run` supervisor, with stand-in processes instead of the services.

Each stand-in is a tiny Python module run the way the launcher runs a service
(``python -m <module>`` in its own session); it records its starts and the
signals it got in a file, so the tests see what each process went through.
The real services under the supervisor are covered by
tests/e2e/test_supervised_platform.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from crm_platform.devinfra.launcher import Platform, ServiceSpec, pid_alive, read_pidfile, stop_from_pidfile
from crm_platform.devinfra.supervisor import RestartPolicy, Supervisor, request_restart

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

T = TypeVar("T")

STANDIN = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    name = os.environ["CRM_SERVICE_NAME"]
    record = Path(os.environ["STANDIN_DIR"]) / f"{name}.events"

    def note(what):
        with record.open("a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    note("start")
    if name.startswith("crashy"):
        sys.exit(3)
    if name.startswith("stubborn"):
        signal.signal(signal.SIGTERM, lambda *_: note("ignored-term"))
    else:
        signal.signal(signal.SIGTERM, lambda *_: (note("term"), sys.exit(0)))
    while True:
        time.sleep(0.05)
    """
)

FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2, stable_after=30.0, max_attempts=4)


def until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def events(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.events"
    return path.read_text().splitlines() if path.exists() else []


def standin_platform(tmp_path: Path, *names: str, stop_timeout: float = 5.0) -> Platform:
    (tmp_path / "standin.py").write_text(STANDIN)
    return Platform(
        "unused:9092",
        "mongodb://unused",
        tmp_path / "logs",
        specs=tuple(ServiceSpec(n, "standin", None, "") for n in names),
        extra_env={"PYTHONPATH": str(tmp_path), "STANDIN_DIR": str(tmp_path)},
        stop_timeout=stop_timeout,
    )


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., tuple[Platform, Supervisor]]]:
    """Start stand-ins and a supervisor loop in a thread; stop both afterwards."""
    stopping = threading.Event()
    started: list[tuple[Platform, threading.Thread]] = []

    def start(*names: str, policy: RestartPolicy = FAST) -> tuple[Platform, Supervisor]:
        platform = standin_platform(tmp_path, *names)
        platform.start()
        for name in names:
            until(lambda n=name: events(tmp_path, n), what=f"{name} to start")  # type: ignore[misc]
        supervisor = Supervisor(platform, policy, control_dir=tmp_path / "control")
        thread = threading.Thread(target=supervisor.run, args=(stopping, 0.02), daemon=True)
        thread.start()
        started.append((platform, thread))
        return platform, supervisor

    yield start
    stopping.set()
    for platform, thread in started:
        thread.join(timeout=10)
        platform.stop()


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_delay=1.0, max_delay=30.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_killed_process_is_restarted_and_the_others_never_stop(
    supervised: Callable[..., tuple[Platform, Supervisor]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crm.supervisor")
    platform, _ = supervised("alpha", "beta")
    victim, bystander = platform.procs["alpha"], platform.procs["beta"]

    os.kill(victim.pid, signal.SIGKILL)

    reborn = until(
        lambda: platform.procs["alpha"].pid != victim.pid and pid_alive(platform.procs["alpha"].pid),
        what="alpha to be restarted",
    )
    assert reborn
    assert platform.procs["beta"] is bystander, "beta must never be replaced"
    assert bystander.poll() is None, "beta must never stop"
    assert events(tmp_path, "beta") == [f"start {bystander.pid}"]
    text = caplog.text
    assert f"alpha (pid {victim.pid}) died: killed by SIGKILL" in text
    assert str(platform.logfile("alpha")) in text
    assert "restarting in 0.1 s (attempt 1 of 4)" in text
    assert f"restarted alpha (pid {platform.procs['alpha'].pid})" in text


def test_a_crash_loop_backs_off_then_gives_up_while_the_rest_runs(
    supervised: Callable[..., tuple[Platform, Supervisor]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crm.supervisor")
    platform, supervisor = supervised("crashy", "beta")
    bystander = platform.procs["beta"]

    until(lambda: supervisor.states["crashy"].given_up, what="the supervisor to give up on crashy")

    # One first start plus max_attempts restarts, each after a doubled (then capped) delay.
    assert len(events(tmp_path, "crashy")) == 1 + FAST.max_attempts
    restarts = [line for line in caplog.messages if "restarting in" in line]
    delays = [line.split("restarting in ")[1].split(" s")[0] for line in restarts]
    assert delays == ["0.1", "0.1", "0.2", "0.2"]  # 0.05, 0.1, 0.2, 0.2 rounded to one decimal
    assert "exit code 3" in caplog.text
    assert "Giving up on crashy: it died 5 times in a row" in caplog.text
    assert "make restart S=crashy" in caplog.text
    assert bystander.poll() is None
    assert platform.procs["beta"] is bystander


def test_backoff_starts_over_after_the_process_stayed_up(tmp_path: Path) -> None:
    now = [0.0]
    platform = standin_platform(tmp_path, "alpha")
    platform.start()
    try:
        policy = RestartPolicy(initial_delay=1.0, max_delay=30.0, stable_after=60.0, max_attempts=3)
        supervisor = Supervisor(platform, policy, clock=lambda: now[0])
        for expected_failures in (1, 2):  # killed right after each start: failures add up
            pid = platform.procs["alpha"].pid
            os.kill(pid, signal.SIGKILL)
            platform.procs["alpha"].wait()
            supervisor.poll()
            assert supervisor.states["alpha"].failures == expected_failures
            now[0] += policy.delay(expected_failures)
            supervisor.poll()
            assert platform.procs["alpha"].pid != pid
        now[0] += 61.0  # stayed up longer than stable_after
        os.kill(platform.procs["alpha"].pid, signal.SIGKILL)
        platform.procs["alpha"].wait()
        supervisor.poll()
        assert supervisor.states["alpha"].failures == 1
        assert supervisor.states["alpha"].restart_at == now[0] + 1.0
    finally:
        platform.stop()


def test_a_restart_request_stops_gracefully_and_revives_a_given_up_process(
    supervised: Callable[..., tuple[Platform, Supervisor]], tmp_path: Path
) -> None:
    platform, supervisor = supervised("alpha")
    first = platform.procs["alpha"].pid

    request = request_restart(tmp_path / "control", "alpha")
    until(lambda: not request.exists() and platform.procs["alpha"].pid != first, what="the requested restart")
    assert f"term {first}" in events(tmp_path, "alpha"), "stopped with SIGTERM, not killed"

    supervisor.states["alpha"].given_up = True  # as after a crash loop
    os.kill(platform.procs["alpha"].pid, signal.SIGKILL)
    second = platform.procs["alpha"].pid
    request = request_restart(tmp_path / "control", "alpha")
    until(lambda: not request.exists() and platform.procs["alpha"].pid != second, what="revival")
    assert not supervisor.states["alpha"].given_up
    assert supervisor.states["alpha"].failures == 0


HARNESS = textwrap.dedent(
    """
    import os, signal, sys, threading
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from crm_platform.devinfra.launcher import Platform, pid_alive
    from crm_platform.devinfra.supervisor import RestartPolicy, Supervisor, shutdown
    from test_supervisor import standin_platform

    tmp = Path(sys.argv[1])
    platform = standin_platform(tmp, *sys.argv[2].split(","), stop_timeout=1.0)
    platform.start()
    pidfile = tmp / "platform.pids"
    platform.write_pids(pidfile, os.getpid())
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    Supervisor(
        platform,
        RestartPolicy(initial_delay=0.01),
        control_dir=tmp / "control",
        on_change=lambda: platform.write_pids(pidfile, os.getpid()),  # as run_platform does
    ).run(stopping, 0.02)
    pids = {n: p.pid for n, p in platform.procs.items()}

    def stop_infra():
        alive = [n for n, pid in pids.items() if pid_alive(pid)]
        (tmp / "infra-stopped").write_text(",".join(alive) or "none")

    shutdown(platform, stop_infra, pidfile)
    """
)


def start_harness(tmp_path: Path, *names: str) -> subprocess.Popen[bytes]:
    """A `make run` stand-in: supervisor + stand-in services, pid file and control dir in tmp_path."""
    (tmp_path / "test_supervisor.py").write_text(Path(__file__).read_text())
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path), ",".join(names)], start_new_session=True
    )


def test_make_stop_stops_every_service_before_the_broker_and_restarts_none(tmp_path: Path) -> None:
    harness = start_harness(tmp_path, "alpha", "beta", "stubborn")
    try:
        pidfile = tmp_path / "platform.pids"
        until(lambda: len(read_pidfile(pidfile)) == 4, what="the pid file")
        pids = read_pidfile(pidfile)
        for name in ("alpha", "beta", "stubborn"):
            until(lambda n=name: events(tmp_path, n), what=f"{name} to start")  # type: ignore[misc]

        stopped = stop_from_pidfile(pidfile, timeout=10)

        assert stopped == ["supervisor"]  # it stopped its services itself
        assert harness.wait(timeout=5) == 0
        assert (tmp_path / "infra-stopped").read_text() == "none", "services still running at infra stop"
        for name in ("alpha", "beta"):
            assert events(tmp_path, name) == [f"start {pids[name]}", f"term {pids[name]}"], name
        # The one that ignores SIGTERM was killed after the timeout; nothing was restarted.
        stubborn = pids["stubborn"]
        assert events(tmp_path, "stubborn") == [f"start {stubborn}", f"ignored-term {stubborn}"]
        assert not pidfile.exists()
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()


def test_a_held_process_stays_down_until_released(
    supervised: Callable[..., tuple[Platform, Supervisor]], tmp_path: Path
) -> None:
    platform, supervisor = supervised("alpha", "beta")
    first = platform.procs["alpha"].pid

    supervisor.hold("alpha")

    assert "alpha" not in platform.procs
    assert f"term {first}" in events(tmp_path, "alpha"), "held with a graceful stop"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # many supervisor polls: none may restart it
        assert "alpha" not in platform.procs
        time.sleep(0.05)
    supervisor.release("alpha")
    assert pid_alive(platform.procs["alpha"].pid)
    assert platform.procs["beta"].poll() is None


def test_make_restart_restarts_one_department_of_a_running_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    monkeypatch.setenv("CRM_INFRA_HOME", str(tmp_path))
    script = Path(__file__).resolve().parents[3] / "scripts" / "run_platform.py"
    spec = importlib.util.spec_from_file_location("run_platform_under_test", script)
    assert spec is not None
    assert spec.loader is not None
    run_platform = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_platform)

    assert run_platform.restart("analytics-worker") == 1, "no supervisor running yet"
    assert "no `make run` is running here" in capsys.readouterr().err

    harness = start_harness(tmp_path, "analytics-worker", "beta")  # the worker has no HTTP port
    try:
        pidfile = tmp_path / "platform.pids"
        until(lambda: len(read_pidfile(pidfile)) == 3, what="the pid file")
        first = read_pidfile(pidfile)["analytics-worker"]
        # The launcher gives the worker CRM_SERVICE_NAME=analytics: its stand-in records as "analytics".
        until(lambda: events(tmp_path, "analytics"), what="the worker to start")
        until(lambda: events(tmp_path, "beta"), what="the other department to start")

        assert run_platform.restart("analytics-worker") == 0
        assert run_platform.restart("no-such-department") == 2

        second = read_pidfile(pidfile)["analytics-worker"]
        assert second != first
        assert f"analytics-worker restarted (pid {second})" in capsys.readouterr().out
        until(lambda: len(events(tmp_path, "analytics")) >= 3, what="the new worker to start")
        assert events(tmp_path, "analytics")[:3] == [
            f"start {first}",
            f"term {first}",
            f"start {second}",
        ]
        assert events(tmp_path, "beta") == [f"start {read_pidfile(pidfile)['beta']}"]
    finally:
        stop_from_pidfile(tmp_path / "platform.pids", timeout=10)
        if harness.poll() is None:
            harness.kill()
        harness.wait()
