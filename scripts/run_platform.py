"""`make run`: the whole platform on this machine, with demo data.

Resolves the broker and database (KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI, else
testcontainers when Docker answers, else the embedded broker and mongod under
.local/run), provisions the topics, starts the five services and the faust
worker as separate processes, creates demo users and plays a short customer
journey, prints where everything is, then supervises: a process that dies is
restarted with a back-off (crm_platform.devinfra.supervisor) while the rest keep
running. Ctrl-C (or SIGTERM) stops the services first, then the broker and mongod.
``make stop`` (``--stop``) stops a platform left running by another terminal;
``make restart S=<name>`` (``--restart NAME``) restarts one department.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from crm_platform.devinfra.launcher import SERVICE_NAMES, Platform, pid_alive, read_pidfile, stop_from_pidfile
from crm_platform.devinfra.supervisor import Supervisor, request_restart, shutdown
from crm_platform.kafka import ensure_topics
from crm_platform.keys import ensure_dev_keys
from crm_platform.testing import idle_backoff_ms

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("CRM_INFRA_HOME", ROOT / ".local/run"))
KAFKA_PORT = int(os.environ.get("CRM_KAFKA_PORT", "19092"))
MONGO_PORT = int(os.environ.get("CRM_MONGO_PORT", "27117"))
GATEWAY_PORT = int(os.environ.get("CRM_GATEWAY_PORT", "8080"))
# leads, sales, service-desk and analytics listen on base+1 ... base+4.
SERVICE_PORT_BASE = int(os.environ.get("CRM_SERVICE_PORT_BASE", "8000"))
PIDFILE = HOME / "platform.pids"
CONTROL_DIR = HOME / "control"

log = logging.getLogger("crm.run")


def stop() -> int:
    """Services first (through the supervisor when it runs), then the broker and mongod."""
    from crm_platform.devinfra.embedded import EmbeddedInfra

    stopped = stop_from_pidfile(PIDFILE)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    EmbeddedInfra(HOME, KAFKA_PORT, MONGO_PORT).stop()
    print(f"stopped the embedded broker and mongod (data kept in {HOME})")
    return 0


def restart(name: str) -> int:
    """Ask the running supervisor to restart one process, then wait until it answers again."""
    if name not in SERVICE_NAMES:
        print(f"unknown service {name!r}; one of: {', '.join(SERVICE_NAMES)}", file=sys.stderr)
        return 2
    supervisor = read_pidfile(PIDFILE).get("supervisor")
    if supervisor is None or not pid_alive(supervisor):
        print(f"no `make run` is running here ({PIDFILE}); start it with `make run`", file=sys.stderr)
        return 1
    request = request_restart(CONTROL_DIR, name)
    platform = Platform("", "", HOME / "logs", gateway_port=GATEWAY_PORT, service_port_base=SERVICE_PORT_BASE)
    deadline = time.monotonic() + platform.stop_timeout + 60
    while request.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if request.exists():
        request.unlink(missing_ok=True)
        print(f"the supervisor (pid {supervisor}) did not pick up the request", file=sys.stderr)
        return 1
    pid = read_pidfile(PIDFILE).get(name)
    has_http = platform.spec(name).port_offset is not None
    if has_http and not _wait_http_ready(f"{platform.url(name)}/readyz", deadline):
        print(f"{name} restarted (pid {pid}) but is not ready yet; see {platform.logfile(name)}")
        return 1
    print(f"{name} restarted (pid {pid}); log {platform.logfile(name)}")
    return 0


def _wait_http_ready(url: str, deadline: float) -> bool:
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop a running platform")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo users and journey")
    parser.add_argument("--restart", metavar="NAME", help=f"restart one of: {', '.join(SERVICE_NAMES)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("httpx", "kafka", "aiokafka"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.stop:
        return stop()
    if args.restart:
        return restart(args.restart)
    return run(args.no_demo)


def run(no_demo: bool) -> int:
    from crm_platform.devinfra.resolve import resolve

    stopping = threading.Event()

    def on_term(*_: object) -> None:
        # Before the supervisor loop runs there is nothing to poll the event: interrupt.
        if not stopping.is_set() and supervising.is_set():
            stopping.set()
        else:
            raise KeyboardInterrupt

    supervising = threading.Event()
    signal.signal(signal.SIGTERM, on_term)
    print(f"==> broker and database (data under {HOME})")
    infra = resolve(HOME, KAFKA_PORT, MONGO_PORT)
    keys = ensure_dev_keys()
    print(f"==> token keys: {keys.private.parent} (Ed25519, generated once for this install)")
    platform = _platform(infra, keys, no_demo)
    try:
        _start(platform, infra)
        credentials = {} if no_demo else _seed(platform)
        _banner(platform, credentials)
        supervisor = Supervisor(
            platform, control_dir=CONTROL_DIR, on_change=lambda: platform.write_pids(PIDFILE, os.getpid())
        )
        supervising.set()
        supervisor.run(stopping)
    except KeyboardInterrupt:
        pass
    finally:
        supervising.clear()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second `make stop` must not cut this short
        print()
        shutdown(platform, infra.stop, PIDFILE)
        print("==> stopped (data kept; `make clean` removes it)")
    return 0


def _platform(infra: Any, keys: Any, no_demo: bool) -> Platform:
    return Platform(
        infra.kafka_bootstrap,
        infra.mongodb_uri,
        HOME / "logs",
        gateway_port=GATEWAY_PORT,
        service_port_base=SERVICE_PORT_BASE,
        consumer_idle_backoff_ms=idle_backoff_ms(infra),
        keys=keys,
        # The demo history sets each request's time (crm_platform.clock, "The demo clock").
        extra_env={} if no_demo else {"CRM_DEMO_CLOCK": "true"},
    )


def _start(platform: Platform, infra: Any) -> None:
    print(f"    {infra.source}: kafka {infra.kafka_bootstrap}, mongodb {infra.mongodb_uri}")
    report = ensure_topics(infra.kafka_bootstrap)
    print(f"==> topics: {len(report.created)} created, {len(report.existing)} already there")
    print("==> starting leads, sales, service-desk, analytics (API + faust worker), console, gateway")
    platform.start()
    platform.write_pids(PIDFILE, os.getpid())
    platform.wait_ready(timeout=90)


def _seed(platform: Platform) -> dict[str, str]:
    """Users, rosters and a short journey now; the history in the background (the credentials)."""
    from crm_platform.devinfra.journey import seed_demo

    print("==> demo data: users, rosters and a short customer journey")
    credentials = seed_demo(platform.url("gateway"), progress=lambda m: print(f"    {m}"))
    # The history plays while the platform is already up: start-up stays short, the
    # figures fill in as it goes (progress lines below the banner).
    threading.Thread(
        target=_seed_history, args=(platform.url("gateway"),), name="demo-history", daemon=True
    ).start()
    return credentials


def _seed_history(gateway_url: str) -> None:
    """A year and more of history (CRM_DEMO_ACCOUNTS accounts, 0 = none) so every KPI has figures."""
    from crm_platform.devinfra.demo_history import seed_history

    accounts = int(os.environ.get("CRM_DEMO_ACCOUNTS", "300"))
    if accounts <= 0:
        return
    print(f"==> demo history: {accounts} accounts played through the gateway at their own dates")
    try:
        seed_history(
            gateway_url,
            accounts=accounts,
            seed=int(os.environ.get("CRM_DEMO_SEED", "1205")),
            workers=int(os.environ.get("CRM_DEMO_WORKERS", "8")),
            progress=lambda m: print(f"    {m}", flush=True),
        )
    except Exception as exc:  # noqa: BLE001 - the platform keeps running without its history
        print(f"==> demo history stopped: {exc}", flush=True)


def _banner(platform: Platform, credentials: dict[str, str]) -> None:
    g = platform.url("gateway")
    lines = [
        "",
        "CRM platform is running. Everything goes through the gateway:",
        f"  console          {g}/   (the web console: log in as one of the demo users below)",
        f"  gateway          {g}   (login: POST {g}/auth/login)",
        f"  API docs         {g}/docs",
        f"  analytics        {g}/api/analytics/summary",
        "  services (direct, for ops): "
        + ", ".join(
            f"{n} {platform.url(n)}" for n in ("leads", "sales", "service-desk", "analytics", "console")
        ),
        "  metrics          <service>/metrics   health: /healthz  readiness: /readyz",
        f"  logs             {platform.logdir}/<service>.log",
    ]
    if credentials:
        lines.append("  demo users (username / password):")
        lines += [f"    {u:<8} {p}" for u, p in credentials.items()]
    lines += [
        "",
        "A process that dies is restarted (back-off, logged here); `make restart S=<name>` restarts one.",
        "Ctrl-C (or `make stop` from another terminal) stops everything: services first, then broker",
        "and mongod.",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
