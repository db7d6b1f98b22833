"""Which Kafka and MongoDB to use, in the project's order of preference.

1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``MONGODB_URI`` set: that cluster, as it is.
2. A Docker engine answers: testcontainers with the official images (``apache/kafka``
   in KRaft mode, ``mongo:7`` as a single-node replica set).
3. Otherwise the embedded broker and mongod (:class:`EmbeddedInfra`) under ``home``.

Each variable is honoured on its own: with only ``KAFKA_BOOTSTRAP_SERVERS`` set, Kafka
is that cluster and only MongoDB comes from step 2 or 3 (``source`` then names where
the started part came from). ``CRM_INFRA_NO_DOCKER=1`` skips step 2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from crm_platform.devinfra.embedded import (
    REPLICA_SET,
    EmbeddedInfra,
    InfraError,
    StartError,
    ensure_replica_set_primary,
    wait_for_kafka,
)

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

log = logging.getLogger("crm.devinfra")

Source = Literal["env", "testcontainers", "embedded"]

KAFKA_IMAGE = os.environ.get("CRM_KAFKA_IMAGE", "apache/kafka:3.9.1")
MONGO_IMAGE = os.environ.get("CRM_MONGO_IMAGE", "mongo:7")
CONTAINER_START_TIMEOUT = 180.0  # the first run pulls the images


@dataclass
class Infra:
    kafka_bootstrap: str
    mongodb_uri: str
    source: Source
    embedded: EmbeddedInfra | None
    stop: Callable[[], None]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def docker_available(timeout: float = 2.0) -> bool:
    """True when resolve() would use testcontainers: Docker answers and nothing opts out."""
    if _truthy(os.environ.get("CRM_INFRA_NO_DOCKER")):
        return False
    # find_spec, not import: importing testcontainers is slow and not needed to decide.
    if importlib.util.find_spec("testcontainers") is None:
        return False
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def resolve(home: Path, kafka_port: int, mongo_port: int) -> Infra:
    kafka_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    mongo_env = os.environ.get("MONGODB_URI", "").strip()
    if kafka_env and mongo_env:
        log.info("using KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI as set")
        return Infra(kafka_env, mongo_env, "env", None, lambda: None)
    if docker_available():
        return _from_testcontainers(kafka_env, mongo_env)
    return _from_embedded(home, kafka_port, mongo_port, kafka_env, mongo_env)


def _from_embedded(home: Path, kafka_port: int, mongo_port: int, kafka_env: str, mongo_env: str) -> Infra:
    embedded = EmbeddedInfra(home, kafka_port, mongo_port)
    if kafka_env:
        log.info("Kafka from KAFKA_BOOTSTRAP_SERVERS; embedded mongod under %s", embedded.home)
        embedded.start_mongo()

        def stop() -> None:
            embedded.stop_mongo()

    elif mongo_env:
        log.info("MongoDB from MONGODB_URI; embedded broker under %s", embedded.home)
        embedded.start_kafka()

        def stop() -> None:
            embedded.stop_kafka()

    else:
        log.info("no Docker engine: embedded broker and mongod under %s", embedded.home)
        embedded.start()

        def stop() -> None:
            embedded.stop()

    return Infra(
        kafka_env or embedded.kafka_bootstrap,
        mongo_env or embedded.mongodb_uri,
        "embedded",
        embedded,
        stop,
    )


# --- testcontainers -------------------------------------------------------------------------------

_KAFKA_STARTER = "/tmp/crm-kafka-listeners.sh"
_KAFKA_PORT = 9092


def _from_testcontainers(kafka_env: str, mongo_env: str) -> Infra:
    started: list[DockerContainer] = []

    def stop() -> None:
        for container in reversed(started):
            with contextlib.suppress(Exception):
                container.stop()
        started.clear()

    try:
        kafka = kafka_env or _kafka_container(started)
        mongo = mongo_env or _mongo_container(started)
    except BaseException:
        stop()
        raise
    return Infra(kafka, mongo, "testcontainers", None, stop)


def _kafka_container(started: list[DockerContainer]) -> str:
    from testcontainers.core.container import DockerContainer

    log.info("Docker answers: starting %s (KRaft, single node) ...", KAFKA_IMAGE)
    t0 = time.monotonic()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_exposed_ports(_KAFKA_PORT)
        .with_envs(
            CLUSTER_ID="4L6g3nShT-eMCtK--X86sw",
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9094",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENERS=f"PLAINTEXT://0.0.0.0:{_KAFKA_PORT},BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_INTER_BROKER_LISTENER_NAME="BROKER",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
        # The advertised address must be the host-side mapped port, known only once the
        # container exists: the command waits for a script that exports it, written below.
        .with_command(
            [
                "sh",
                "-c",
                f"while [ ! -f {_KAFKA_STARTER} ]; do sleep 0.1; done; "
                f". {_KAFKA_STARTER}; exec /etc/kafka/docker/run",
            ]
        )
    )
    started.append(container)
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(_KAFKA_PORT)
    script = f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9093\n"
    container.copy_into_container(script.encode(), _KAFKA_STARTER, mode=0o644)
    bootstrap = f"{host}:{port}"
    try:
        wait_for_kafka(bootstrap, t0 + CONTAINER_START_TIMEOUT)
    except StartError as exc:
        raise InfraError(f"{exc} (container {KAFKA_IMAGE})") from None
    log.info("kafka container ready at %s in %.1f s", bootstrap, time.monotonic() - t0)
    return bootstrap


def _mongo_container(started: list[DockerContainer]) -> str:
    from testcontainers.core.container import DockerContainer

    log.info("Docker answers: starting %s as a single-node replica set ...", MONGO_IMAGE)
    t0 = time.monotonic()
    # No root user: the image's auth setup plus --replSet would demand a keyFile.
    container = (
        DockerContainer(MONGO_IMAGE)
        .with_exposed_ports(27017)
        .with_command(["--replSet", REPLICA_SET, "--bind_ip_all"])
    )
    started.append(container)
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(27017)
    # The member is registered as localhost:27017, its address inside the container; the
    # host reaches it only through the mapped port, so clients connect directly instead of
    # discovering members (transactions and change streams work the same on a direct
    # connection to the primary).
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    try:
        ensure_replica_set_primary(uri, "localhost:27017", t0 + CONTAINER_START_TIMEOUT)
    except StartError as exc:
        raise InfraError(f"{exc} (container {MONGO_IMAGE})") from None
    log.info("mongo container ready at %s in %.1f s", uri, time.monotonic() - t0)
    return uri
