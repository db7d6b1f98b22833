"""`make run`: the whole platform on this machine, with demo data.

Resolves the broker and database (KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI, else
testcontainers when Docker answers, else the embedded broker and mongod under
.local/run), provisions the topics, starts the five services and the faust
worker as separate processes, creates demo users and plays a short customer
journey, prints where everything is, and stops it all on Ctrl-C. `make stop`
(``--stop``) stops a platform left running by another terminal.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from crm_platform.devinfra.launcher import Platform, stop_from_pidfile
from crm_platform.kafka import ensure_topics
from crm_platform.testing import idle_backoff_ms

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("CRM_INFRA_HOME", ROOT / ".local/run"))
KAFKA_PORT = int(os.environ.get("CRM_KAFKA_PORT", "19092"))
MONGO_PORT = int(os.environ.get("CRM_MONGO_PORT", "27117"))
GATEWAY_PORT = int(os.environ.get("CRM_GATEWAY_PORT", "8080"))
PIDFILE = HOME / "platform.pids"

log = logging.getLogger("crm.run")


def stop() -> int:
    from crm_platform.devinfra.embedded import EmbeddedInfra

    stopped = stop_from_pidfile(PIDFILE)
    print(f"stopped services: {', '.join(stopped) or 'none running'}")
    EmbeddedInfra(HOME, KAFKA_PORT, MONGO_PORT).stop()
    print("stopped the embedded broker and mongod (data kept in .local/run)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop a running platform")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo users and journey")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("httpx", "kafka", "aiokafka"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.stop:
        return stop()

    from crm_platform.devinfra.resolve import resolve

    print(f"==> broker and database (data under {HOME})")
    infra = resolve(HOME, KAFKA_PORT, MONGO_PORT)
    print(f"    {infra.source}: kafka {infra.kafka_bootstrap}, mongodb {infra.mongodb_uri}")
    report = ensure_topics(infra.kafka_bootstrap)
    print(f"==> topics: {len(report.created)} created, {len(report.existing)} already there")

    platform = Platform(
        infra.kafka_bootstrap,
        infra.mongodb_uri,
        HOME / "logs",
        gateway_port=GATEWAY_PORT,
        consumer_idle_backoff_ms=idle_backoff_ms(infra),
    )
    print("==> starting leads, sales, service-desk, analytics (API + faust worker), gateway")
    platform.start()
    platform.write_pids(PIDFILE)
    stopping = threading.Event()
    try:
        platform.wait_ready(timeout=90)
        gateway = platform.url("gateway")
        credentials: dict[str, str] = {}
        if not args.no_demo:
            from crm_platform.devinfra.journey import seed_demo

            print("==> demo data: users, rosters and a short customer journey")
            credentials = seed_demo(gateway, progress=lambda m: print(f"    {m}"))
        _banner(platform, credentials)
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        while not stopping.wait(1.0):
            for name, proc in platform.procs.items():
                if proc.poll() is not None:
                    print(f"!! {name} exited with {proc.returncode}; see {HOME}/logs/{name}.log")
                    stopping.set()
    except KeyboardInterrupt:
        pass
    finally:
        print("\n==> stopping services")
        platform.stop()
        PIDFILE.unlink(missing_ok=True)
        infra.stop()
        print("==> stopped (data kept; `make clean` removes it)")
    return 0


def _banner(platform: Platform, credentials: dict[str, str]) -> None:
    g = platform.url("gateway")
    lines = [
        "",
        "CRM platform is running. Everything goes through the gateway:",
        f"  gateway          {g}   (login: POST {g}/auth/login)",
        f"  API docs         {g}/docs",
        f"  analytics        {g}/api/analytics/summary",
        "  services (direct, for ops): "
        + ", ".join(f"{n} {platform.url(n)}" for n in ("leads", "sales", "service-desk", "analytics")),
        "  metrics          <service>/metrics   health: /healthz  readiness: /readyz",
        f"  logs             {platform.logdir}/<service>.log",
    ]
    if credentials:
        lines.append("  demo users (username / password):")
        lines += [f"    {u:<8} {p}" for u, p in credentials.items()]
    lines += ["", "Ctrl-C (or `make stop` from another terminal) stops everything.", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
