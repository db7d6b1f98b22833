"""Start the whole platform as separate processes: five services and the faust worker.

Used by ``make run``, the end-to-end tests and the benchmarks, so all three run
the product the same way it runs in production: one process per department,
talking only over Kafka and HTTP. Services are named by module, never imported.
``make run`` keeps them running with :mod:`crm_platform.devinfra.supervisor`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from crm_platform.keys import KeyFiles, ensure_dev_keys

log = logging.getLogger("crm.launcher")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port_offset: int | None  # None: no HTTP port (the faust worker)
    env_name: str  # how the gateway finds it: CRM_<X>_URL


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("leads", "leads.main", 1, "CRM_LEADS_URL"),
    ServiceSpec("sales", "sales.main", 2, "CRM_SALES_URL"),
    ServiceSpec("service-desk", "service_desk.main", 3, "CRM_SERVICE_DESK_URL"),
    ServiceSpec("analytics", "analytics.main", 4, "CRM_ANALYTICS_URL"),
    ServiceSpec("analytics-worker", "analytics.worker", None, ""),
    # The web console: no database, no broker; it calls the gateway, which serves it at /.
    ServiceSpec("console", "console.main", 5, "CRM_CONSOLE_URL"),
    ServiceSpec("gateway", "gateway.main", 0, ""),
)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)

STOP_TIMEOUT = 20.0  # seconds a service gets to stop after SIGTERM before SIGKILL


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (Popen reports a signal as -N)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Platform:
    """The processes of one platform instance.

    The gateway listens on ``gateway_port``; the others on ``service_port_base +
    offset`` (defaults: gateway 8080, leads 8001 ... analytics 8004, console 8005).
    """

    kafka_bootstrap: str
    mongodb_uri: str
    logdir: Path
    gateway_port: int = 8080
    service_port_base: int = 8000
    db_prefix: str = ""
    group_suffix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    only: tuple[str, ...] | None = None
    # The embedded broker answers empty fetches at once; see ServiceSettings.
    consumer_idle_backoff_ms: int = 0
    # The token keys: this install's development pair unless given.
    keys: KeyFiles | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # What to run; tests of the supervisor put stand-in processes here.
    specs: tuple[ServiceSpec, ...] = SERVICES
    stop_timeout: float = STOP_TIMEOUT

    def spec(self, name: str) -> ServiceSpec:
        return next(s for s in self.specs if s.name == name)

    def logfile(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def port(self, name: str) -> int:
        spec = self.spec(name)
        assert spec.port_offset is not None
        if spec.name == "gateway":
            return self.gateway_port
        return self.service_port_base + spec.port_offset

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        service = "analytics" if spec.name == "analytics-worker" else spec.name
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
                "MONGODB_URI": self.mongodb_uri,
                "MONGODB_DATABASE": f"{self.db_prefix}{service.replace('-', '_')}",
                "CRM_SERVICE_NAME": service,
                "CRM_ENV": "local",
                "CRM_LOG_LEVEL": "INFO",
                "CRM_CONSUMER_IDLE_BACKOFF_MS": str(self.consumer_idle_backoff_ms),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Static membership: a service killed without leaving its group (kill -9, the
        # supervisor's restart) takes its partitions back when it comes up again,
        # even on the embedded broker, which never evicts such a member.
        env["CRM_CONSUMER_INSTANCE_ID"] = f"{spec.name}{self.group_suffix}-0"
        if self.group_suffix:
            env["CRM_CONSUMER_GROUP"] = f"{service}{self.group_suffix}"
            env["CRM_ANALYTICS_APP_ID"] = f"crm-analytics{self.group_suffix}"
        if spec.port_offset is not None:
            env["CRM_HTTP_PORT"] = str(self.port(spec.name))
        env.update(self._token_env(spec))
        for other in self.specs:
            if other.env_name:
                env[other.env_name] = self.url(other.name)
        if spec.name == "console" and any(s.name == "gateway" for s in self.specs):
            env["CRM_CONSOLE_GATEWAY_URL"] = self.url("gateway")
        env.update(self.extra_env)
        return env

    def _token_env(self, spec: ServiceSpec) -> dict[str, str]:
        """Every process gets the public keys; only the gateway the private key. Services
        follow the gateway's revocation list."""
        keys = self.keys or ensure_dev_keys()
        env = {"CRM_JWT_PUBLIC_KEYS_FILE": str(keys.public)}
        if spec.name == "gateway":
            env["CRM_JWT_PRIVATE_KEY_FILE"] = str(keys.private)
        elif any(s.name == "gateway" for s in self.specs):
            env["CRM_REVOCATIONS_URL"] = f"{self.url('gateway')}/internal/revocations"
        return env

    def start(self, names: tuple[str, ...] | None = None) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            wanted = names or self.only
            if wanted is not None and spec.name not in wanted:
                continue
            if spec.name in self.procs and self.procs[spec.name].poll() is None:
                continue
            with self.logfile(spec.name).open("ab") as logfile:
                # Own session: a Ctrl-C in `make run`'s terminal reaches the supervisor only,
                # which then stops every service in order.
                self.procs[spec.name] = subprocess.Popen(
                    [sys.executable, "-m", spec.module],
                    env=self.env_for(spec),
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            log.info("started %s (pid %d)", spec.name, self.procs[spec.name].pid)

    def wait_ready(self, timeout: float = 60.0, names: tuple[str, ...] | None = None) -> None:
        """Poll every HTTP service's /readyz until 200; fail naming the laggards."""
        deadline = time.monotonic() + timeout
        pending = {s.name for s in self.specs if s.port_offset is not None and s.name in self.procs}
        if names is not None:
            pending &= set(names)
        with httpx.Client(timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    proc = self.procs[name]
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited with {proc.returncode}; see {self.logdir}/{name}.log"
                        )
                    try:
                        if client.get(f"{self.url(name)}/readyz").status_code == 200:
                            pending.discard(name)
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.1)
        if pending:
            raise TimeoutError(f"not ready after {timeout:.0f}s: {sorted(pending)} ({self.logdir})")

    def stop(self, names: tuple[str, ...] | None = None, sig: int = signal.SIGTERM) -> None:
        """Signal every target at once, wait up to ``stop_timeout`` for all, then SIGKILL."""
        targets = [n for n in self.procs if names is None or n in names]
        for name in targets:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(sig)
        deadline = time.monotonic() + self.stop_timeout
        for name in targets:
            proc = self.procs.pop(name)
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, self.stop_timeout)
                proc.kill()
                proc.wait()

    def write_pids(self, path: Path, supervisor_pid: int | None = None) -> None:
        """Record the pids for `make stop` / `make restart` (written anew after each restart)."""
        lines = [f"supervisor {supervisor_pid}\n"] if supervisor_pid is not None else []
        lines += [f"{n} {p.pid}\n" for n, p in self.procs.items() if p.poll() is None]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(path)


def read_pidfile(path: Path) -> dict[str, int]:
    """``name -> pid`` from a pid file written by :meth:`Platform.write_pids` (empty if none)."""
    pids: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return pids
    for line in lines:
        name, _, raw_pid = line.partition(" ")
        try:
            pids[name] = int(raw_pid)
        except ValueError:
            continue
    return pids


def pid_alive(pid: int) -> bool:
    """Running, not a zombie (reaped here if it is our own finished child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state not in ("Z", "X")


def terminate(pids: dict[str, int], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM every pid at once, wait up to ``timeout`` for all, SIGKILL the rest.

    Returns the names that were running. Waiting for all before returning is what
    lets ``make stop`` stop the broker and mongod only after the services are gone.
    """
    signalled: dict[str, int] = {}
    for name, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        signalled[name] = pid
    deadline = time.monotonic() + timeout
    for name, pid in signalled.items():
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            log.warning("%s (pid %d) still running %.0f s after SIGTERM; SIGKILL", name, pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            while pid_alive(pid):
                time.sleep(0.05)
    return list(signalled)


def stop_from_pidfile(path: Path, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop what a running ``make run`` started (for ``make stop``); returns what was running.

    The supervisor goes first: a SIGTERM makes it stop every service (SIGTERM, wait,
    SIGKILL) and the broker and mongod, in that order, and it restarts nothing while
    doing so. Services it left behind (it was killed, or stopping timed out) are
    then stopped here. The caller stops the broker and mongod only after this returns.
    """
    pids = read_pidfile(path)
    supervisor = pids.pop("supervisor", None)
    stopped: list[str] = []
    if supervisor is not None:
        # Its own stop takes the services' stop timeout plus the broker's and mongod's.
        stopped += terminate({"supervisor": supervisor}, timeout=timeout + 40)
    stopped += terminate({n: p for n, p in pids.items() if pid_alive(p)}, timeout=timeout)
    path.unlink(missing_ok=True)
    return stopped
