"""``crm-infra``: start, stop and inspect the embedded broker and mongod.

    crm-infra start  [--home DIR] [--kafka-port N] [--mongo-port N]
    crm-infra stop   [...]
    crm-infra status [...]
    crm-infra env    [...]     # eval "$(crm-infra env)" exports the connection strings

Defaults: CRM_INFRA_HOME (.local/run, relative to the workspace root), CRM_KAFKA_PORT
(19092), CRM_MONGO_PORT (27117). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from crm_platform.devinfra.embedded import (
    DEFAULT_KAFKA_PORT,
    DEFAULT_MONGO_PORT,
    EmbeddedInfra,
    InfraError,
)

DEFAULT_HOME = ".local/run"


def _workspace_root() -> Path:
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "uv.lock").exists():
            return candidate
    return here


def _default_home() -> Path:
    # The default must name the same folder wherever the command runs from (`make run`
    # uses <root>/.local/run); an explicit --home is relative to the cwd as usual.
    home = Path(os.environ.get("CRM_INFRA_HOME") or DEFAULT_HOME)
    return home if home.is_absolute() else _workspace_root() / home


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return _port(raw)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"crm-infra: {name}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        type=Path,
        default=None,
        help=f"data, logs and pid files (env CRM_INFRA_HOME, default {DEFAULT_HOME})",
    )
    common.add_argument(
        "--kafka-port",
        type=_port,
        default=None,
        help=f"broker port on 127.0.0.1 (env CRM_KAFKA_PORT, default {DEFAULT_KAFKA_PORT})",
    )
    common.add_argument(
        "--mongo-port",
        type=_port,
        default=None,
        help=f"mongod port on 127.0.0.1 (env CRM_MONGO_PORT, default {DEFAULT_MONGO_PORT})",
    )
    parser = argparse.ArgumentParser(
        prog="crm-infra",
        description="Embedded Kafka-protocol broker (noida-db) and mongod for development.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{start,stop,status,env}")
    sub.add_parser("start", parents=[common], help="start both (or reuse them), print where they are")
    sub.add_parser("stop", parents=[common], help="stop both cleanly (data is kept)")
    sub.add_parser("status", parents=[common], help="show what runs where")
    sub.add_parser("env", parents=[common], help="print `export ...` lines for the connection strings")
    return parser


def _start(infra: EmbeddedInfra) -> int:
    infra.start()
    print(f"KAFKA_BOOTSTRAP_SERVERS={infra.kafka_bootstrap}")
    print(f"MONGODB_URI={infra.mongodb_uri}")
    return 0


def _stop(infra: EmbeddedInfra) -> int:
    reports = infra.stop()
    for report in reports:
        print(report)
    return 1 if any(r.outcome == "failed" for r in reports) else 0


def _status(infra: EmbeddedInfra) -> int:
    rows = [("component", "state", "pid", "connect", "data", "log")]
    for name, st in infra.status().items():
        state = ("running" if st["listening"] else "starting") if st["running"] else "stopped"
        rows.append((name, state, str(st["pid"] or "-"), st["url"], st["data_dir"], st["log_file"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _env(infra: EmbeddedInfra) -> int:
    print(f"export KAFKA_BOOTSTRAP_SERVERS={shlex.quote(infra.kafka_bootstrap)}")
    print(f"export MONGODB_URI={shlex.quote(infra.mongodb_uri)}")
    status = infra.status()
    if not (status["kafka"]["running"] and status["mongo"]["running"]):
        print(f"crm-infra: note: not running under {infra.home}; `crm-infra start` first", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[EmbeddedInfra], int]] = {
    "start": _start,
    "stop": _stop,
    "status": _status,
    "env": _env,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Readiness probes expect refused connections while a server starts; the client
    # library's own error logs about them would only be noise here.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    infra = EmbeddedInfra(
        args.home if args.home is not None else _default_home(),
        args.kafka_port if args.kafka_port is not None else _env_port("CRM_KAFKA_PORT", DEFAULT_KAFKA_PORT),
        args.mongo_port if args.mongo_port is not None else _env_port("CRM_MONGO_PORT", DEFAULT_MONGO_PORT),
    )
    try:
        return COMMANDS[args.command](infra)
    except InfraError as exc:
        print(f"crm-infra: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("crm-infra: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(
            f"crm-infra: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
