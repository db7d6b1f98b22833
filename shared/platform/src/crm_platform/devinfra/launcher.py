"""Start the whole platform as separate processes: five services and the faust worker.

Used by ``make run``, the end-to-end tests and the benchmarks, so all three run
the product the same way it runs in production: one process per department,
talking only over Kafka and HTTP. Services are named by module, never imported.
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
    ServiceSpec("gateway", "gateway.main", 0, ""),
)


@dataclass
class Platform:
    """The processes of one platform instance.

    The gateway listens on ``gateway_port``; the others on ``service_port_base +
    offset`` (defaults: gateway 8080, leads 8001 ... analytics 8004).
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
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def port(self, name: str) -> int:
        spec = next(s for s in SERVICES if s.name == name)
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
                "CRM_OUTBOX_POLL_SECONDS": "0.2",
                "CRM_CONSUMER_IDLE_BACKOFF_MS": str(self.consumer_idle_backoff_ms),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.group_suffix:
            env["CRM_CONSUMER_GROUP"] = f"{service}{self.group_suffix}"
            env["CRM_ANALYTICS_APP_ID"] = f"crm-analytics{self.group_suffix}"
        if spec.port_offset is not None:
            env["CRM_HTTP_PORT"] = str(self.port(spec.name))
        for other in SERVICES:
            if other.env_name:
                env[other.env_name] = self.url(other.name)
        env.update(self.extra_env)
        return env

    def start(self, names: tuple[str, ...] | None = None) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        for spec in SERVICES:
            wanted = names or self.only
            if wanted is not None and spec.name not in wanted:
                continue
            if spec.name in self.procs and self.procs[spec.name].poll() is None:
                continue
            logfile = (self.logdir / f"{spec.name}.log").open("ab")
            self.procs[spec.name] = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=self.env_for(spec),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.info("started %s (pid %d)", spec.name, self.procs[spec.name].pid)

    def wait_ready(self, timeout: float = 60.0, names: tuple[str, ...] | None = None) -> None:
        """Poll every HTTP service's /readyz until 200; fail naming the laggards."""
        deadline = time.monotonic() + timeout
        pending = {s.name for s in SERVICES if s.port_offset is not None and s.name in self.procs}
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
        targets = [n for n in self.procs if names is None or n in names]
        for name in targets:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(sig)
        for name in targets:
            proc = self.procs.pop(name)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 20 s; killing it", name)
                proc.kill()
                proc.wait()

    def write_pids(self, path: Path) -> None:
        path.write_text("".join(f"{n} {p.pid}\n" for n, p in self.procs.items()))


def stop_from_pidfile(path: Path, timeout: float = 20.0) -> list[str]:
    """Stop processes recorded by a previous ``make run`` (for ``make stop``)."""
    stopped: list[str] = []
    if not path.exists():
        return stopped
    pids: list[tuple[str, int]] = []
    for line in path.read_text().splitlines():
        name, _, raw_pid = line.partition(" ")
        try:
            pid = int(raw_pid)
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            continue
        pids.append((name, pid))
    deadline = time.monotonic() + timeout
    for name, pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped.append(name)
    path.unlink(missing_ok=True)
    return stopped
