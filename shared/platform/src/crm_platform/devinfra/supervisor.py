"""Keep every process of a ``make run`` platform running: restart the one that died.

One department's process exiting, crashing or being killed must not take the
others down (they keep serving; their handoffs to the dead one wait in Kafka). The
supervisor polls its processes; when one has exited it says which, how (exit code
or signal), after how long, where its log is and when it will be started again,
then restarts it after an exponential back-off (``initial_delay`` doubling up to
``max_delay``). A process that stays up ``stable_after`` seconds has its back-off
reset. One that keeps dying right after starting is given up on after
``max_attempts`` restarts in a row, with a message saying how to restart it by
hand once it is fixed; the rest of the platform keeps running.

Restarting one department by hand (``make restart S=sales``) drops a request file
into ``control_dir``; the supervisor stops that process gracefully (SIGTERM, wait,
SIGKILL), starts it at once and forgets its failures (a given-up process too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crm_platform.devinfra.launcher import Platform, describe_exit

log = logging.getLogger("crm.supervisor")

REQUEST_PREFIX = "restart-"


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0  # seconds up after which the back-off starts again from the beginning
    max_attempts: int = 12  # restarts in a row (none stable) before giving up: ~5 min of crashing

    def delay(self, failures: int) -> float:
        """Seconds before restart number ``failures`` (1-based) of a run of quick crashes."""
        return float(min(self.initial_delay * 2 ** max(failures - 1, 0), self.max_delay))


@dataclass
class ServiceState:
    started_at: float
    failures: int = 0  # deaths since it last stayed up `stable_after` seconds
    restart_at: float | None = None  # when a death is pending restart
    given_up: bool = False
    held: bool = False  # stopped on purpose (hold): not restarted until released
    restarts: int = 0  # total, for reports


class Supervisor:
    """Watches ``platform.procs`` (already started) and restarts what dies.

    Call :meth:`poll` periodically (or :meth:`run` in a thread); it never blocks
    except for a hand-requested restart, which waits for the graceful stop.
    """

    def __init__(
        self,
        platform: Platform,
        policy: RestartPolicy | None = None,
        *,
        control_dir: Path | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.policy = policy or RestartPolicy()
        self.control_dir = control_dir
        self.on_change = on_change
        self.clock = clock
        now = clock()
        self.states: dict[str, ServiceState] = {name: ServiceState(now) for name in platform.procs}
        # poll() runs in its own thread; hold/release/restart may come from another.
        self._lock = threading.RLock()
        if control_dir is not None:
            control_dir.mkdir(parents=True, exist_ok=True)
            for stale in control_dir.glob(f"{REQUEST_PREFIX}*"):
                stale.unlink(missing_ok=True)

    def run(self, stopping: threading.Event, interval: float = 0.2) -> None:
        while not stopping.wait(interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            self._take_requests()
            now = self.clock()
            for name, proc in list(self.platform.procs.items()):
                state = self.states.setdefault(name, ServiceState(now))
                if state.restart_at is None and not state.given_up and proc.poll() is not None:
                    self._died(name, proc.pid, proc.returncode, now)
            for name, state in self.states.items():
                if state.restart_at is not None and now >= state.restart_at and not state.held:
                    self._start(name, now)

    def restart(self, name: str) -> None:
        """Graceful stop, immediate start, failures forgotten (``make restart S=<name>``)."""
        if name not in {s.name for s in self.platform.specs}:
            log.warning("%s restart requested for unknown process %r", _now(), name)
            return
        with self._lock:
            log.info(
                "%s restarting %s by request (SIGTERM, then SIGKILL after %.0f s)",
                _now(),
                name,
                self.platform.stop_timeout,
            )
            self.platform.stop((name,))
            self.states[name] = ServiceState(self.clock())
            self._start(name, self.clock(), requested=True)

    def hold(self, name: str) -> None:
        """Stop ``name`` gracefully and keep it down (a department taken out on purpose)."""
        with self._lock:
            log.warning("%s holding %s down (SIGTERM; not restarted until released)", _now(), name)
            self.platform.stop((name,))
            self.states[name] = ServiceState(self.clock(), held=True)

    def release(self, name: str) -> None:
        """Start a held process again at once."""
        with self._lock:
            self.states[name] = ServiceState(self.clock())
            self._start(name, self.clock(), requested=True)

    def _died(self, name: str, pid: int, returncode: int, now: float) -> None:
        state = self.states[name]
        uptime = now - state.started_at
        if uptime >= self.policy.stable_after:
            state.failures = 0
        state.failures += 1
        how = f"{name} (pid {pid}) died: {describe_exit(returncode)} after {uptime:.1f} s up"
        logfile = self.platform.logfile(name)
        if state.failures > self.policy.max_attempts:
            state.given_up = True
            log.error(
                "%s !! %s; log %s. Giving up on %s: it died %d times in a row, each within %.0f s of "
                "starting. The rest of the platform keeps running. Fix the cause (see the log), then "
                "`make restart S=%s`.",
                _now(),
                how,
                logfile,
                name,
                state.failures,
                self.policy.stable_after,
                name,
            )
            self._changed()
            return
        delay = self.policy.delay(state.failures)
        state.restart_at = now + delay
        log.warning(
            "%s !! %s; log %s; restarting in %.1f s (attempt %d of %d)",
            _now(),
            how,
            logfile,
            delay,
            state.failures,
            self.policy.max_attempts,
        )
        self._changed()

    def _start(self, name: str, now: float, *, requested: bool = False) -> None:
        state = self.states[name]
        state.restart_at = None
        state.given_up = False
        state.started_at = now
        state.restarts += 1
        try:
            self.platform.start((name,))
        except OSError as exc:  # e.g. the log folder vanished: count it as a death
            log.error("%s could not start %s: %s", _now(), name, exc)
            self._died(name, -1, 1, now)
            return
        pid = self.platform.procs[name].pid
        log.warning("%s restarted %s (pid %d)%s", _now(), name, pid, " by request" if requested else "")
        self._changed()

    def _take_requests(self) -> None:
        if self.control_dir is None:
            return
        for request in sorted(self.control_dir.glob(f"{REQUEST_PREFIX}*")):
            self.restart(request.name.removeprefix(REQUEST_PREFIX))
            request.unlink(missing_ok=True)  # after the restart: the requester waits for this

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def request_restart(control_dir: Path, name: str) -> Path:
    """Ask a running supervisor to restart ``name``; it deletes the file once restarted."""
    control_dir.mkdir(parents=True, exist_ok=True)
    request = control_dir / f"{REQUEST_PREFIX}{name}"
    request.touch()
    return request


def _now() -> str:
    return time.strftime("%H:%M:%S")


def shutdown(platform: Platform, stop_infra: Callable[[], object], pidfile: Path | None = None) -> None:
    """Stop the services (SIGTERM, wait, SIGKILL), and only then the broker and mongod.

    Services stopping first lets their consumers leave their groups and their relays
    finish a publish while the broker still answers; nothing is restarted meanwhile
    because the supervisor loop has ended before this is called.
    """
    log.info("%s stopping the services (SIGTERM, then SIGKILL after %.0f s)", _now(), platform.stop_timeout)
    platform.stop()
    if pidfile is not None:
        pidfile.unlink(missing_ok=True)
    log.info("%s services stopped; stopping the broker and mongod", _now())
    stop_infra()
