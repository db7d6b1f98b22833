"""The embedded broker and mongod, against the real binaries, plus resolve()'s choices.

Every test that starts servers uses its own tmp folder and free ports, so it never
touches `.local/run`, `.local/test` or anything another test run has started.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from crm_platform.devinfra import cli, embedded
from crm_platform.devinfra import resolve as resolve_module
from crm_platform.devinfra.embedded import MONGO_CACHE_GB_ENV, EmbeddedInfra, PortInUseError, kafka_answers
from crm_platform.devinfra.resolve import Infra, docker_available, resolve
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from pymongo import MongoClient

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

T = TypeVar("T")


# --- helpers ----------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on; all bound at once so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(check: Callable[[], T], *, timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {result!r})")
        time.sleep(0.05)


def served_by(port: int, pids: set[int]) -> bool:
    """Whether one of ``pids`` still listens on ``port``.

    Not "does the port accept": on a machine shared with other test runs, a port freed by
    our server may be taken by someone else's at once (free_ports hands out the same range).
    """
    from crm_platform.devinfra.embedded import _port_owner

    owner = _port_owner(port)
    return owner is not None and any(owner.startswith(f"pid {pid} ") for pid in pids)


def pid_exists(pid: int) -> bool:
    """Running, not merely an unreaped zombie (a container's init may reap orphans late)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state not in ("Z", "X")


def create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, value).get(timeout=10)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def read_partition(bootstrap: str, topic: str, expected: int, group: str | None = None) -> list[bytes]:
    """Read partition 0 from the start until ``expected`` records arrived (or the deadline)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
        if group is not None:
            consumer.commit()
        return values
    finally:
        consumer.close()


def committed_offset(bootstrap: str, topic: str, group: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        result: int | None = consumer.committed(TopicPartition(topic, 0))
        return result
    finally:
        consumer.close()


def mongo(infra: EmbeddedInfra) -> MongoClient[dict[str, Any]]:
    return MongoClient(infra.mongodb_uri, serverSelectionTimeoutMS=10_000)


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[EmbeddedInfra]:
    kafka_port, mongo_port = free_ports(2)
    embedded = EmbeddedInfra(tmp_path / "infra", kafka_port, mongo_port)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


# --- the embedded servers ---------------------------------------------------------------------------


@pytest.mark.integration
def test_started_servers_answer_and_are_detached(infra: EmbeddedInfra) -> None:
    topic = f"devinfra-{uuid.uuid4().hex[:8]}"
    create_topic(infra.kafka_bootstrap, topic)
    produce(infra.kafka_bootstrap, topic, b"hello")
    assert read_partition(infra.kafka_bootstrap, topic, expected=1) == [b"hello"]

    with mongo(infra) as client:
        items = client.devinfra.items
        items.insert_one({"_id": "plain", "n": 1})
        assert items.find_one({"_id": "plain"}) == {"_id": "plain", "n": 1}

        # Multi-document transactions need the replica set; a standalone mongod refuses them.
        with client.start_session() as session, session.start_transaction():
            items.insert_one({"_id": "tx"}, session=session)
            client.devinfra.audit.insert_one({"_id": "tx"}, session=session)
        assert items.find_one({"_id": "tx"}) is not None
        assert client.devinfra.audit.find_one({"_id": "tx"}) is not None

        def abort_midway() -> None:
            with client.start_session() as session, session.start_transaction():
                items.insert_one({"_id": "aborted"}, session=session)
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            abort_midway()
        assert items.find_one({"_id": "aborted"}) is None

    status = infra.status()
    for name in ("kafka", "mongo"):
        assert status[name]["running"], status
        assert status[name]["listening"], status
        assert status[name]["pid"] is not None
    assert status["kafka"]["url"] == infra.kafka_bootstrap == f"127.0.0.1:{infra.kafka_port}"
    assert status["mongo"]["url"] == infra.mongodb_uri
    assert infra.mongodb_uri == f"mongodb://127.0.0.1:{infra.mongo_port}/?replicaSet=rs0"
    # Its own session: a Ctrl-C aimed at the terminal's foreground group cannot reach it.
    kafka_pid = status["kafka"]["pid"]
    assert kafka_pid is not None
    assert os.getsid(kafka_pid) == kafka_pid
    assert os.getsid(kafka_pid) != os.getsid(0)
    # Everything stays under home.
    for key in ("data_dir", "log_file"):
        assert Path(status["kafka"][key]).is_relative_to(infra.home)
        assert Path(status["mongo"][key]).is_relative_to(infra.home)


@pytest.mark.integration
def test_second_start_reuses_the_running_servers(
    infra: EmbeddedInfra, caplog: pytest.LogCaptureFixture
) -> None:
    before = infra.status()
    caplog.set_level(logging.INFO, logger="crm.devinfra")
    infra.start()
    # A fresh object on the same home is what a second `make run` (another process) sees.
    EmbeddedInfra(infra.home, infra.kafka_port, infra.mongo_port).start()
    after = infra.status()
    assert after["kafka"]["pid"] == before["kafka"]["pid"]
    assert after["mongo"]["pid"] == before["mongo"]["pid"]
    assert sum("reusing" in r.getMessage() for r in caplog.records) == 4


@pytest.mark.integration
def test_stop_then_start_keeps_data(infra: EmbeddedInfra) -> None:
    topic = f"durable-{uuid.uuid4().hex[:8]}"
    group = f"group-{uuid.uuid4().hex[:8]}"
    create_topic(infra.kafka_bootstrap, topic)
    produce(infra.kafka_bootstrap, topic, b"before-restart")
    assert read_partition(infra.kafka_bootstrap, topic, expected=1, group=group) == [b"before-restart"]
    with mongo(infra) as client:
        client.devinfra.durable.insert_one({"_id": "kept", "v": 42})
    old = infra.status()

    reports = infra.stop()

    assert [(r.component, r.outcome) for r in reports] == [("kafka", "stopped"), ("mongo", "stopped")]
    for report, name in zip(reports, ("kafka", "mongo"), strict=True):
        assert report.pid == old[name]["pid"]
    assert not served_by(infra.kafka_port, {p for p in (old["kafka"]["pid"], old["mongo"]["pid"]) if p})
    assert not served_by(infra.mongo_port, {p for p in (old["kafka"]["pid"], old["mongo"]["pid"]) if p})
    status = infra.status()
    assert not status["kafka"]["running"]
    assert not status["mongo"]["running"]
    assert status["kafka"]["pid"] is None
    assert not infra.kafka_pidfile.exists()
    assert not infra.mongo_pidfile.exists()
    for name in ("kafka", "mongo"):
        pid = old[name]["pid"]
        assert pid is not None
        assert not pid_exists(pid)
    assert [r.outcome for r in infra.stop()] == ["not running", "not running"]

    infra.start()

    new = infra.status()
    assert new["kafka"]["running"]
    assert new["mongo"]["running"]
    assert new["kafka"]["pid"] != old["kafka"]["pid"]
    assert read_partition(infra.kafka_bootstrap, topic, expected=1) == [b"before-restart"]
    assert committed_offset(infra.kafka_bootstrap, topic, group) == 1
    with mongo(infra) as client:
        assert client.devinfra.durable.find_one({"_id": "kept"}) == {"_id": "kept", "v": 42}


@pytest.mark.integration
def test_stop_kills_a_broker_that_ignores_the_signal(tmp_path: Path) -> None:
    (kafka_port,) = free_ports(1)
    embedded = EmbeddedInfra(tmp_path / "infra", kafka_port, stop_timeout=0.5)
    embedded.start_kafka()
    pid = embedded.status()["kafka"]["pid"]
    assert pid is not None
    # A stopped process cannot act on SIGINT, which stands in for a hung broker.
    os.kill(pid, signal.SIGSTOP)
    try:
        report = embedded.stop_kafka()
    finally:
        if pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    assert report.outcome == "killed"
    assert report.pid == pid
    assert not embedded.status()["kafka"]["running"]
    wait_until(lambda: not served_by(kafka_port, {pid}), what="the killed broker's port to close")


@pytest.mark.integration
def test_a_port_still_held_without_a_listener_is_waited_for(tmp_path: Path) -> None:
    """Like the sockets a just-stopped server leaves (FIN_WAIT2): bound, nobody listening."""
    import threading

    lingering = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lingering.bind(("127.0.0.1", 0))  # no SO_REUSEADDR, no listen(): the port cannot be bound again
    port = lingering.getsockname()[1]
    threading.Timer(1.0, lingering.close).start()
    embedded = EmbeddedInfra(tmp_path / "infra", kafka_port=port)
    try:
        embedded.start_kafka()
        assert kafka_answers(embedded.kafka_bootstrap)
    finally:
        lingering.close()
        embedded.stop()


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        embedded = EmbeddedInfra(tmp_path / "infra", kafka_port=port)
        with pytest.raises(PortInUseError) as excinfo:
            embedded.start_kafka()
    message = str(excinfo.value)
    assert f"port {port}" in message
    assert "CRM_KAFKA_PORT" in message
    assert "--kafka-port" in message
    assert not embedded.kafka_pidfile.exists()


def test_a_zombie_reaped_while_its_threads_are_read_counts_as_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its /proc entry vanishing between the stat and the task listing (seen under load: crm-infra
    start failed with FileNotFoundError on /proc/<pid>/task) means the process is gone."""
    pid = os.getpid()  # exists for kill(0) and is nobody's child to reap

    class VanishingProc(type(Path())):  # type: ignore[misc]
        def read_text(self, *args: Any, **kwargs: Any) -> str:
            if str(self) == f"/proc/{pid}/stat":
                return f"{pid} (mongod) Z 1 1 1"  # the leader thread exited first
            return str(super().read_text(*args, **kwargs))

        def iterdir(self) -> Iterator[Path]:
            if str(self) == f"/proc/{pid}/task":
                raise FileNotFoundError(f"/proc/{pid}/task")
            return super().iterdir()

    monkeypatch.setattr(embedded, "Path", VanishingProc)
    assert embedded._alive(pid) is False


def test_stale_pid_file_is_cleaned_and_never_signalled(tmp_path: Path) -> None:
    embedded = EmbeddedInfra(tmp_path / "infra", *free_ports(2))
    # This very test process: alive, but not a broker on this data dir, so not ours.
    embedded.kafka_pidfile.parent.mkdir(parents=True)
    embedded.kafka_pidfile.write_text(f"{os.getpid()}\n")
    assert not embedded.status()["kafka"]["running"]
    assert embedded.kafka_pidfile.exists()  # status only looks

    report = embedded.stop_kafka()

    assert report.outcome == "not running"
    assert not embedded.kafka_pidfile.exists()


# --- the command line ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_platform.devinfra", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_cli_start_outlives_its_process_and_stop_stops(tmp_path: Path) -> None:
    kafka_port, mongo_port = free_ports(2)
    opts = [
        "--home",
        str(tmp_path / "infra"),
        "--kafka-port",
        str(kafka_port),
        "--mongo-port",
        str(mongo_port),
    ]
    pids: set[int] = set()
    try:
        started = run_cli("start", *opts)
        assert started.returncode == 0, started.stderr
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}" in started.stdout
        assert f"MONGODB_URI=mongodb://127.0.0.1:{mongo_port}/?replicaSet=rs0" in started.stdout
        assert "GLIBC" not in started.stdout + started.stderr

        # The process that started them has exited; both still serve.
        assert kafka_answers(f"127.0.0.1:{kafka_port}")
        client: MongoClient[dict[str, Any]]
        with MongoClient(f"mongodb://127.0.0.1:{mongo_port}/?replicaSet=rs0") as client:
            assert client.admin.command("hello")["isWritablePrimary"]

        env = run_cli("env", *opts)
        assert env.returncode == 0
        assert env.stdout.splitlines() == [
            f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}",
            f"export MONGODB_URI='mongodb://127.0.0.1:{mongo_port}/?replicaSet=rs0'",
        ]
        status = run_cli("status", *opts)
        assert status.returncode == 0
        rows = [line.split() for line in status.stdout.splitlines()[1:]]
        assert [(row[0], row[1]) for row in rows] == [("kafka", "running"), ("mongo", "running")]
        pids = {int(row[2]) for row in rows}
    finally:
        stopped = run_cli("stop", *opts)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("kafka: stopped")
    assert "mongo: stopped" in stopped.stdout
    assert not served_by(kafka_port, pids)
    assert not served_by(mongo_port, pids)
    assert not any(pid_exists(pid) for pid in pids)


def test_cli_failure_is_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        code = cli.main(["start", "--home", str(tmp_path / "infra"), "--kafka-port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("crm-infra: error: port ")
    assert sum(line.startswith("crm-infra:") for line in err) == 1


# --- resolve() ------------------------------------------------------------------------------------


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("resolve() must not start or probe anything here")


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve_module, "docker_available", _forbidden)
    monkeypatch.setattr(resolve_module, "_from_testcontainers", _forbidden)
    for method in ("start", "start_kafka", "start_mongo", "stop", "stop_kafka", "stop_mongo"):
        monkeypatch.setattr(EmbeddedInfra, method, _forbidden)


@pytest.mark.usefixtures("no_io")
def test_resolve_uses_env_vars_when_both_are_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1.prod:9092,kafka-2.prod:9092")
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.prod:27017/?replicaSet=main")

    infra = resolve(tmp_path / "home", 19092, 27117)

    assert infra.source == "env"
    assert infra.kafka_bootstrap == "kafka-1.prod:9092,kafka-2.prod:9092"
    assert infra.mongodb_uri == "mongodb://db.prod:27017/?replicaSet=main"
    assert infra.embedded is None
    infra.stop()  # nothing of ours to stop
    assert not (tmp_path / "home").exists()


def test_resolve_embeds_only_what_env_does_not_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.shared:9092")
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("CRM_INFRA_NO_DOCKER", "1")
    monkeypatch.setattr(EmbeddedInfra, "start_kafka", _forbidden)
    monkeypatch.setattr(EmbeddedInfra, "start_mongo", lambda self: calls.append("start_mongo"))
    monkeypatch.setattr(EmbeddedInfra, "stop_mongo", lambda self: calls.append("stop_mongo"))

    infra = resolve(tmp_path / "home", 19092, 27555)

    assert infra.source == "embedded"
    assert infra.kafka_bootstrap == "kafka.shared:9092"
    assert infra.mongodb_uri == "mongodb://127.0.0.1:27555/?replicaSet=rs0"
    assert infra.embedded is not None
    infra.stop()
    assert calls == ["start_mongo", "stop_mongo"]


def test_resolve_prefers_testcontainers_when_docker_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    fake = Infra(
        "localhost:32768",
        "mongodb://localhost:32769/?directConnection=true",
        "testcontainers",
        None,
        lambda: None,
    )
    monkeypatch.setattr(resolve_module, "docker_available", lambda: True)
    monkeypatch.setattr(resolve_module, "_from_testcontainers", lambda kafka, mongo: fake)
    monkeypatch.setattr(EmbeddedInfra, "start", _forbidden)

    assert resolve(tmp_path, 19092, 27117) is fake


def test_no_docker_opt_out_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_INFRA_NO_DOCKER", "1")
    monkeypatch.setattr(importlib.util, "find_spec", _forbidden)
    assert docker_available() is False


def test_testcontainers_is_not_imported_without_docker() -> None:
    code = (
        "import sys\n"
        "from crm_platform.devinfra.resolve import docker_available\n"
        "docker_available()\n"
        "assert 'testcontainers' not in sys.modules, 'testcontainers imported'\n"
    )
    env = {**os.environ, "CRM_INFRA_NO_DOCKER": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_mongod_cache_is_a_quarter_gb_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    infra = EmbeddedInfra(tmp_path, 1, 2)
    monkeypatch.delenv(MONGO_CACHE_GB_ENV, raising=False)
    command = infra._mongod_command(Path("mongod"))
    assert command[command.index("--wiredTigerCacheSizeGB") + 1] == "0.25"
    monkeypatch.setenv(MONGO_CACHE_GB_ENV, "2")
    command = infra._mongod_command(Path("mongod"))
    assert command[command.index("--wiredTigerCacheSizeGB") + 1] == "2"
    for bad in ("0.1", "lots"):
        monkeypatch.setenv(MONGO_CACHE_GB_ENV, bad)
        with pytest.raises(ValueError, match=MONGO_CACHE_GB_ENV):
            infra._mongod_command(Path("mongod"))
