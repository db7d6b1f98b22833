"""Pytest plugin shared by every test suite: one broker and one mongod per run.

Enable with ``pytest_plugins = ["crm_platform.testing"]``. The infrastructure is
resolved once per session (env vars -> testcontainers -> embedded, see
``crm_platform.devinfra``) and left running for the next suite; ``make test``
stops it at the end. Helpers poll with a deadline, never sleep a fixed time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from crm_contracts import Envelope
from crm_contracts.access import PERSON_KEYS
from fastapi import FastAPI
from pymongo.monitoring import CommandListener, CommandStartedEvent

from crm_platform import shredding
from crm_platform.auth import Principal, TokenIssuer
from crm_platform.kafka import make_consumer
from crm_platform.kafka_security import KafkaSecurity
from crm_platform.keys import SigningKey, ensure_dev_keys, load_private_key
from crm_platform.settings import ServiceSettings

T = TypeVar("T")

# Settings that build a service's app without reaching anything (unit tests of its routes and
# settings): addresses nothing listens on, plaintext Kafka allowed for them. Read-only: copy it
# (``{**OFFLINE_SETTINGS, ...}``) to add to it.
OFFLINE_SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "MONGODB_URI": "mongodb://127.0.0.1:1/?directConnection=true",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CRM_KAFKA_ALLOW_PLAINTEXT": "true",
    }
)

# Strings at the edge of RFC 3339 with a zone: what the Timestamp's Python check (a regular
# expression) and pydantic's datetime parser each accept or refuse.
EDGE_TIMESTAMPS: tuple[str, ...] = (
    "2026-01-01T00:00:00Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T00:00:00.1Z",
    "2026-01-01T00:00:00.123456789+14:00",
    "2026-01-01T00:00:00.1234567890Z",
    "2026-01-01T00:00:00.Z",
    "2026-01-01T23:59:60Z",
    "2026-01-01T24:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00-00:00",
    "2026-01-01T00:00:00+2400",
    "2026-01-01T00:00:00+0100",  # pydantic accepts these three and "1700000000", the contract not
    "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00:00.123456789123456Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00+23:59",
    "2026-01-01T00:00Z",
    "2026-01-01 00:00:00Z",
    "2026-01-01T00:00:00Z\n",
    "\n2026-01-01T00:00:00Z",
    " 2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00ZZ",
    "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits: \d in Python's re
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # full-width digits
    "2026-01-01T00:00:00\u0660Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "1700000000",
    "",
)

TEST_HOME = Path(os.environ.get("CRM_TEST_INFRA_HOME", ".local/test"))
TEST_KAFKA_PORT = int(os.environ.get("CRM_TEST_KAFKA_PORT", "19192"))
TEST_MONGO_PORT = int(os.environ.get("CRM_TEST_MONGO_PORT", "27217"))
SESSION = uuid.uuid4().hex[:8]
EMBEDDED_IDLE_BACKOFF_MS = 20


class CommandNames(CommandListener):
    """The names of the commands a PyMongo client sends, in order (each one a round trip):
    ``AsyncMongoClient(uri, event_listeners=[names])``; ``sent`` has each name with its body.
    With ``collection``, only the commands on that collection."""

    def __init__(self, collection: str | None = None) -> None:
        self.collection = collection
        self.names: list[str] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: CommandStartedEvent) -> None:
        if self.collection is None or event.command.get(event.command_name) == self.collection:
            self.names.append(event.command_name)
            self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: object) -> None: ...

    def failed(self, event: object) -> None: ...


def dependency_names(dependant: Any, out: set[str] | None = None) -> set[str]:
    """The names of every dependency a FastAPI route declares, nested ones included: a lean
    route that makes its checks itself (leads' ``CaptureRoute``, the gateway's
    ``ForwardingRoute``) is tested against what its route declares."""
    out = set() if out is None else out
    for dependency in dependant.dependencies:
        call = dependency.call
        out.add(getattr(call, "__name__", type(call).__name__))
        dependency_names(dependency, out)
    return out


def _repo_root() -> Path:
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "uv.lock").exists():
            return candidate
    return here


@pytest.fixture(scope="session")
def crm_infra() -> Any:
    if os.environ.get("CRM_TEST_NO_INFRA"):
        # `make unit` sets it: a unit test reaching for the broker or mongod fails here
        # instead of quietly starting them (unit tests use the fakes).
        pytest.fail("this is a unit run (CRM_TEST_NO_INFRA): no broker, no database; use the fakes")
    from crm_platform.devinfra.resolve import resolve
    from crm_platform.kafka import ensure_topics, pace_empty_fetches

    home = TEST_HOME if TEST_HOME.is_absolute() else _repo_root() / TEST_HOME
    infra = resolve(home, TEST_KAFKA_PORT, TEST_MONGO_PORT)
    ensure_topics(infra.kafka_bootstrap, replication_factor=1)
    pace_empty_fetches(idle_backoff_ms(infra))  # the test's own readers, and in-process services
    return infra


@pytest.fixture(scope="session")
def kafka_bootstrap(crm_infra: Any) -> str:
    return str(crm_infra.kafka_bootstrap)


@pytest.fixture(scope="session")
def mongodb_uri(crm_infra: Any) -> str:
    return str(crm_infra.mongodb_uri)


@pytest.fixture
def make_settings(crm_infra: Any, kafka_bootstrap: str, mongodb_uri: str) -> Callable[..., ServiceSettings]:
    """Settings for a service under test: its own fresh database, a per-run group."""

    def build(service_name: str, **overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "CRM_SERVICE_NAME": service_name,
            "CRM_ENV": "test",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": f"t_{service_name.replace('-', '_')}_{uuid.uuid4().hex[:10]}",
            "CRM_OUTBOX_POLL_SECONDS": 0.1,
            "CRM_CONSUMER_IDLE_BACKOFF_MS": idle_backoff_ms(crm_infra),
            "CRM_PROVISION_TOPICS": False,
        }
        values.update(overrides)
        return ServiceSettings.model_validate(values)

    return build


S = TypeVar("S", bound=ServiceSettings)


def isolated_settings(
    settings_cls: type[S], service_name: str, kafka_bootstrap: str, mongodb_uri: str, **env: Any
) -> S:
    """Settings for one service under test: a fresh database and a consumer group of its own.

    The service name is kept, so dead letters still go to ``crm.dlq.<service>``; the
    group is unique, so no other process consuming as ``<service>`` on the same broker
    (another suite, a local ``make run``) takes this test's partitions. ``env``
    overrides any value by its environment name.
    """
    run = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "CRM_SERVICE_NAME": service_name,
        "CRM_CONSUMER_GROUP": f"{service_name}-test-{run}",
        "CRM_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MONGODB_URI": mongodb_uri,
        "MONGODB_DATABASE": f"t_{service_name.replace('-', '_')}_{run}",
        "CRM_OUTBOX_POLL_SECONDS": 0.1,
        "CRM_PROVISION_TOPICS": False,
    }
    values.update(env)
    return settings_cls.model_validate(values)


async def start_group_at_end(bootstrap: str, group: str, topics: list[str]) -> None:
    """Commit the topics' current end offsets for a new consumer group, and for its key group.

    The test broker is shared: other suites leave thousands of events on the
    topics. A new group (the platform consumer starts new groups at the earliest
    offset) would read them all first; positioned at the end it sees only what is
    produced from here on. The same goes for the group's key consumer
    (``shredding.key_group``): left at the earliest offset it would work through the
    fuzz suites' records on the key topics while the test measures the department.
    """
    await _commit_end_offsets(bootstrap, group, topics)
    await _commit_end_offsets(bootstrap, shredding.key_group(group), sorted(ALL_KEY_TOPICS))


ALL_KEY_TOPICS = frozenset(topic for topics in PERSON_KEYS.values() for topic in topics)


async def _commit_end_offsets(bootstrap: str, group: str, topics: list[str]) -> None:
    consumer = make_consumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetch metadata so partitions are known
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


def timers_asked(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times the running event loop's timers are set for from now on (``loop.call_at``),
    in the order asked: where a wait on the wake-up grid (crm_platform.wakeups) ends."""
    loop = asyncio.get_running_loop()
    asked: list[float] = []
    real = loop.call_at

    def call_at(when: float, *args: Any, **kwargs: Any) -> Any:
        asked.append(when)
        return real(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", call_at)
    return asked


def idle_backoff_ms(infra: Any) -> int:
    """The empty-fetch pause for consumers on this infrastructure (see ``pace_empty_fetches``).

    ``CRM_CONSUMER_IDLE_BACKOFF_MS`` decides when set (``make test`` sets it for the
    service suites it points at its embedded broker); otherwise the embedded broker
    gets a pause and any other broker none.
    """
    explicit = os.environ.get("CRM_CONSUMER_IDLE_BACKOFF_MS")
    if explicit:
        return int(explicit)
    return EMBEDDED_IDLE_BACKOFF_MS if getattr(infra, "embedded", None) is not None else 0


@functools.cache
def dev_signing_key() -> SigningKey:
    """This install's development signing key (generated once under ``.local/keys``); services
    under test verify with its public half, the settings' development default."""
    return load_private_key(ensure_dev_keys().private)


def token_for(
    roles: list[str],
    username: str = "tester",
    *,
    user_id: str | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A token as the gateway would sign it; the subject is ``user-<username>`` unless given."""
    issuer = TokenIssuer(dev_signing_key(), "crm-gateway", "crm")
    principal = Principal(user_id or f"user-{username}", username, frozenset(roles))
    return issuer.issue(principal, ttl).token


def auth_headers(roles: list[str], username: str = "tester") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(roles, username)}"}


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (runtime, relay, consumer) and give an HTTP client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def timeout_scale() -> float:
    """How much longer than written a polling deadline may run on this machine now.

    ``CRM_TEST_TIMEOUT_SCALE`` sets it; otherwise it follows the load: on a quiet machine 1,
    on a machine whose run queue is several times its cores (parallel test runs on two cores)
    up to 5. Only deadlines stretch; a passing check still returns at once, and a test
    never asserts on how long something took.
    """
    configured = os.environ.get("CRM_TEST_TIMEOUT_SCALE")
    if configured:
        return max(1.0, float(configured))
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(5.0, max(1.0, per_core / 2))


def until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """:func:`eventually` for a test that polls from a plain thread (a platform of processes,
    a blocking client): ``check``'s first result that is not None; fails after ``timeout``
    seconds, stretched by :func:`timeout_scale`."""
    deadline = time.monotonic() + timeout * timeout_scale()
    while time.monotonic() < deadline:
        if (result := check()) is not None:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds.

    ``timeout`` is stretched by :func:`timeout_scale` on an overloaded machine.
    """
    timeout *= timeout_scale()
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class TopicReader:
    """Reads topics from their current end (what arrives after ``start``) or from the beginning."""

    def __init__(self, bootstrap: str, *topics: str, from_beginning: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.from_beginning = from_beginning
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicReader:
        consumer = make_consumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        await consumer.topics()  # fetches cluster metadata, so partitions are known
        partitions = []
        for topic in self.topics:
            for p in sorted(consumer.partitions_for_topic(topic) or []):
                partitions.append(TopicPartition(topic, p))
        consumer.assign(partitions)
        if self.from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve positions now, before anything is produced
            await consumer.position(tp)
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self) -> list[Any]:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            self.records.extend(records)
        return self.records

    async def read_to_end(self, *, timeout: float = 20.0) -> list[Any]:
        """Every record on the topics as they end now (all that was published before this call,
        e.g. once an outbox has drained), polling until the reader has passed each partition's end.

        One ``poll`` gets what the consumer's fetches brought within 100 ms: under load a record
        published already may not be among it (a single poll counted a handoff 0 times)."""
        assert self._consumer is not None
        consumer = self._consumer
        ends = await consumer.end_offsets(sorted(consumer.assignment()))

        async def passed() -> bool:
            await self.poll()
            return all([await consumer.position(tp) >= end for tp, end in ends.items()])

        await eventually(passed, timeout=timeout, what=f"the end of {', '.join(self.topics)}")
        return self.records

    def envelopes(self, event_type: str | None = None) -> list[Envelope]:
        out = []
        for r in self.records:
            try:
                env = Envelope.from_bytes(r.value)
            except Exception:
                continue
            if event_type is None or env.event_type == event_type:
                out.append(env)
        return out

    async def wait_for(
        self, predicate: Callable[[list[Any]], T | None], *, timeout: float = 20.0, what: str = "records"
    ) -> T:
        async def check() -> T | None:
            return predicate(await self.poll())

        return await eventually(check, timeout=timeout, what=what)


async def produce(
    bootstrap: str,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> RecordMetadata:
    """Produce one record and return where it landed (topic, partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **KafkaSecurity.from_env().aiokafka_kwargs())
    await producer.start()
    try:
        return await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await producer.stop()


async def produce_envelope(bootstrap: str, topic: str, env: Envelope) -> RecordMetadata:
    return await produce(
        bootstrap, topic, env.to_bytes(), key=env.partition_key.encode(), headers=env.headers()
    )


def _claims(
    roles: list[str], username: str, *, issued: int, ttl: int, audience: str = "crm"
) -> dict[str, Any]:
    return {
        "sub": f"user-{username}",
        "name": username,
        "roles": roles,
        "iss": "crm-gateway",
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    import base64
    import json

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode('ascii')))}"


def expired_token(roles: list[str], username: str = "tester") -> str:
    """Signed with this install's key, expired ten minutes ago."""
    key = dev_signing_key()
    claims = _claims(roles, username, issued=int(time.time()) - 3600, ttl=3000)
    return _compact({"alg": "EdDSA", "typ": "JWT", "kid": key.kid}, claims, key.private.sign)


def forged_tokens(roles: list[str], username: str = "tester") -> dict[str, str]:
    """Tokens this install's gateway never signed, by the way they are forged."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from crm_platform.keys import thumbprint

    real = dev_signing_key()
    other = Ed25519PrivateKey.generate()
    claims = _claims(roles, username, issued=int(time.time()), ttl=600)
    public_pem = real.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "another_key_same_kid": _compact({"alg": "EdDSA", "kid": real.kid}, claims, other.sign),
        "another_key_own_kid": _compact(
            {"alg": "EdDSA", "kid": thumbprint(other.public_key())}, claims, other.sign
        ),
        "alg_none": _compact({"alg": "none", "kid": real.kid}, claims, lambda _: b""),
        "hs256_public_key_as_secret": _compact(
            {"alg": "HS256", "kid": real.kid},
            claims,
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "wrong_audience": _compact(
            {"alg": "EdDSA", "kid": real.kid},
            _claims(roles, username, issued=int(time.time()), ttl=600, audience="elsewhere"),
            real.private.sign,
        ),
        "tampered_roles": _tamper(token_for(["analyst"], username), roles),
    }


def _tamper(token: str, roles: list[str]) -> str:
    """A real token whose payload was edited (roles raised) with the signature kept."""
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = roles
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


# -- audit coverage (issue 9): every write route leaves an audit entry -------------------------

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def write_routes(app: FastAPI) -> set[str]:
    """Every ``METHOD /path`` of the app's OpenAPI document that can change something."""
    return {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method.upper() in WRITE_METHODS
    }


async def audit_entries(db: Any, response: httpx.Response) -> list[dict[str, Any]]:
    """The audit entries the request behind ``response`` wrote (by its ``X-Request-ID``)."""
    from crm_platform.audit import AUDIT_LOG

    request_id = response.headers["x-request-id"]
    return [doc async for doc in db[AUDIT_LOG].find({"request_id": request_id})]


async def assert_audited(db: Any, response: httpx.Response) -> list[dict[str, Any]]:
    """The request succeeded and wrote at least one audit entry naming its user and route."""
    request = response.request
    what = f"{request.method} {request.url.path}"
    assert response.is_success, f"{what}: {response.status_code} {response.text}"
    entries = await audit_entries(db, response)
    assert entries, f"{what} succeeded ({response.status_code}) but wrote no audit entry"
    for doc in entries:
        assert doc["actor"]["type"] == "user", (what, doc["actor"])
        assert doc["actor"]["user_id"], (what, doc["actor"])
        assert str(doc["operation"]).startswith(f"{request.method} "), (what, doc["operation"])
    return entries


async def produce_together(
    bootstrap: str, topic: str, envs: Sequence[Envelope], *, partition: int = 0
) -> None:
    """Produce ``envs`` as ONE record batch on one partition, in order: a consumer's fetch
    returns them together, so its group commit stores them in one transaction."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=1 << 20, **KafkaSecurity.from_env().aiokafka_kwargs()
    )
    await producer.start()
    try:
        batch = producer.create_batch()
        for env in envs:
            key, value = env.partition_key.encode(), env.to_bytes()
            added = batch.append(key=key, value=value, timestamp=None, headers=env.headers())
            assert added is not None, "the record batch is full"
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def event_cause(env: Envelope) -> tuple[Any, ...]:
    """What an audit entry of a change ``env`` caused names: the event's sender, id and type,
    the operation ``event <type> v<version>`` and the journey's correlation id."""
    return (f"event:{env.source}", str(env.event_id), env.event_type,
            f"event {env.event_type} v{env.schema_version}", env.correlation_id)  # fmt: skip


def entry_cause(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """An audit entry's cause, comparable with :func:`event_cause`."""
    actor = entry["actor"]
    return (actor["user_id"], actor.get("event_id"), actor.get("event_type"), entry["operation"],
            entry["correlation_id"])  # fmt: skip


async def histories_name_their_events(
    db: Any, record_type: str, causes: Mapping[str, Envelope], *, since: datetime | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each record's history (``crm_platform.audit``'s per-record query, as ``GET
    /<records>/{id}/history`` reads it; from ``since``): at least one entry, every one naming
    the record's own causing event in ``causes`` (record id -> envelope). Returns the
    histories, newest first."""
    from crm_platform import audit

    histories: dict[str, list[dict[str, Any]]] = {}
    for record_id, env in causes.items():
        filters = audit.Filters(record_type=record_type, record_id=record_id, since=since)
        entries = (await audit.query(db, filters, limit=100)).items
        assert entries, f"{record_type} {record_id}: no audit entry"
        for entry in entries:
            assert entry_cause(entry) == event_cause(env), (record_type, record_id, entry)
        histories[record_id] = entries
    return histories


async def named_by_events_only(db: Any, transaction: str) -> list[dict[str, Any]]:
    """Every audit entry ``transaction`` wrote (read back per record), asserting none names
    anything but an event (``system:<service>`` was the grouped transaction's gap)."""
    from crm_platform import audit

    found = await db[audit.AUDIT_LOG].find({"_id": {"$regex": f"^{re.escape(transaction)}\\."}}).to_list()
    await audit.with_values(db, found)
    entries = [e for doc in found for e in audit.entries_of(doc)]
    assert entries, f"transaction {transaction} wrote no audit entry"
    assert [e for e in entries if e["actor"]["type"] != "event"] == [], "an entry names no event"
    return entries


def transaction_of(entry: Mapping[str, Any]) -> str:
    """The transaction that wrote an audit entry (as stored or read: ``_id``, or the API's
    ``id``): its entries' ids are ``<transaction>.<n>``."""
    return str(entry.get("_id", entry.get("id"))).split(".", 1)[0]


async def request_erasure(bootstrap: str, email: str) -> Envelope:
    """The gateway's ``erasure.requested`` for the person of ``email``, produced; its envelope."""
    from crm_contracts import envelope_for, utcnow
    from crm_contracts.events.governance import ErasureRequestedV1
    from crm_contracts.topics import GATEWAY_ERASURE_REQUESTS

    from crm_platform.pseudonym import email_hash

    request = ErasureRequestedV1(
        request_id=f"er-{uuid.uuid4().hex[:12]}",
        email_hash=email_hash(email),
        record_ids=[],
        requested_at=utcnow(),
    )
    env = envelope_for(request, source="gateway", correlation_id=request.request_id)
    await produce_envelope(bootstrap, GATEWAY_ERASURE_REQUESTS, env)
    return env


async def erasure_reports(db: Any, request_id: str) -> dict[str, list[dict[str, Any]]]:
    """What a department's outbox holds for erasure request ``request_id``, by event type
    (``erasure.erased``, ``erasure.completed``): each event's payload, in the order stored. The
    outbox is written in the erasure's (and the recheck's) own transaction, so what is absent
    here after that commit was not sent."""
    from crm_platform.mongo import OUTBOX, outbox_events_pipeline

    found: dict[str, list[dict[str, Any]]] = {}
    pipeline = outbox_events_pipeline({"key": request_id, "event_type": {"$regex": "^erasure[.]"}})
    async for item in await db[OUTBOX].aggregate(pipeline):
        found.setdefault(item["event_type"], []).append(item["envelope"]["payload"])
    return found


async def erased_not_confirmed(db: Any, request_id: str, department: str) -> dict[str, Any]:
    """The department's erasure of ``request_id`` committed and its recheck has not run: its
    outbox holds one ``erasure.erased`` and NO ``erasure.completed`` (a late writer's record may
    still hold the person: a confirmation now would lie). The first pass's payload."""
    reports = await erasure_reports(db, request_id)
    assert "erasure.completed" not in reports, f"{department} confirmed before its recheck"
    (first,) = reports["erasure.erased"]
    assert first["department"] == department
    return dict(first)


async def confirmed_once(db: Any, request_id: str, first: Mapping[str, Any], late: int) -> dict[str, Any]:
    """After the recheck: one ``erasure.completed`` (sent in the recheck's transaction), counting
    the first pass's records and the ``late`` ones the recheck erased; still one first pass."""
    reports = await erasure_reports(db, request_id)
    (completed,) = reports["erasure.completed"]
    assert completed["records_erased"] == first["records_erased"] + late, (completed, first)
    assert completed["audit_entries_rewritten"] >= first["audit_entries_rewritten"] + late
    assert len(reports["erasure.erased"]) == 1
    return dict(completed)


@asynccontextmanager
async def erasure_before_commit(
    bootstrap: str, email: str, committed: Callable[[Envelope], Awaitable[Any]]
) -> AsyncIterator[list[Envelope]]:
    """The late writer's race, step by step: inside, the next transaction's commit first files an
    erasure request for ``email`` and waits for ``committed(request)`` (the department's erasure
    of it committed); a retried attempt (its snapshot after the erasure) commits at once. Yields
    the requests filed (one, once the transaction has committed)."""
    from crm_platform.mongo import commit_after_var

    requests: list[Envelope] = []

    async def erased_meanwhile() -> None:
        if requests:
            return
        requests.append(await request_erasure(bootstrap, email))
        await committed(requests[0])

    token = commit_after_var.set(erased_meanwhile)
    try:
        yield requests
    finally:
        commit_after_var.reset(token)


def lead_qualified(lead_id: str = "lead-1", **changes: Any) -> Any:
    """A ``lead.qualified`` v1 handoff as marketing sends it, with ``changes`` over its fields (tests)."""
    from crm_contracts import utcnow
    from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
    from crm_contracts.events.leads import LeadQualifiedV1

    fields: dict[str, Any] = {
        "lead_id": lead_id,
        "contact": Contact(name="Ann", email="ann@example.com"),
        "company": "Co",
        "score": 50.0,
        "threshold": 40.0,
        "score_reasons": [ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=50.0)],
        "source_channel": "web_form",
        "behaviour_summary": {Behaviour.TRIAL_SIGNUP: 1},
        "consent": Consent(marketing_email=True),
        "qualified_at": utcnow(),
    }
    return LeadQualifiedV1(**{**fields, **changes})


def action_item_raised(department: str, *, due: timedelta = timedelta(days=3)) -> Any:
    """An ``action_item.raised_for_<department>`` event as customer success sends it (tests)."""
    from crm_contracts import utcnow
    from crm_contracts.events.action_items import RAISED_BY_DEPARTMENT

    item_id = f"ai-{uuid.uuid4().hex[:10]}"
    return RAISED_BY_DEPARTMENT[department](
        item_id=item_id,
        department=department,
        title="Explain the renewal price to the buyer",
        due_at=utcnow() + due,
        account_id=f"acct-{item_id}",
        account_name="Lovelace Analytics",
        source={"kind": "check_in", "record_id": "ci-1"},
        raised_by="csm-cara",
        raised_at=utcnow() - timedelta(seconds=1),
    )


async def raise_action_item(store: Any, department: str, *, due: timedelta = timedelta(days=3)) -> str:
    """Store an action item raised for ``department`` as its handoff would (for route tests)."""
    from crm_contracts import utcnow

    from crm_platform.action_items.handlers import receive_in

    event = action_item_raised(department, due=due)

    async def work(tx: Any) -> None:
        await receive_in(tx, event, utcnow(), journey_id=f"journey-{event.item_id}")

    await store.transaction(work)
    return str(event.item_id)


# A policy version above any a shared broker's permissions topic may carry (the permission
# tests publish epoch-millisecond versions; a department applies the newest it sees).
TEST_GRANT_VERSION = 2**62


async def grant_for_test(runtime: Any, grants: dict[str, set[str]]) -> None:
    """Grant roles permissions on top of the defaults in one service's database, as an
    administrator would (``PUT /permissions/roles/{role}``), numbered so that no copy of the
    policy arriving on the shared broker later replaces it; the service reloads it at once."""
    from crm_platform.permission_policy import COLLECTION, DOC_ID, load_policy, policy_doc
    from crm_platform.permissions import Policy

    current = await load_policy(runtime.db)
    held = {role: set(current.holds(role)) for role in current.grants}
    for role, extra in grants.items():
        held[role] = held.get(role, set()) | extra
    policy = Policy.of(TEST_GRANT_VERSION, held)
    await runtime.db[COLLECTION].replace_one({"_id": DOC_ID}, policy_doc(policy), upsert=True)
    runtime.permissions.invalidate()


async def opened_payload(db: Any, envelope: Envelope) -> dict[str, Any]:
    """The payload of ``envelope`` with its sealed personal data opened (issue 9,
    ``crm_platform.shredding``), read with the keys of the producer's database ``db``: what a
    test of a producer asserts on. An event that seals nothing comes back as it is."""
    from crm_contracts.registry import decode

    from crm_platform.shredding import OwnerKeys, open_event

    return (await open_event(OwnerKeys(db), decode(envelope))).to_payload()


def json_shape(value: Any) -> Any:
    """A JSON value with each leaf replaced by its type's name: two answers of the same shape
    (the same keys, lists of the same length, the same kinds of value) compare equal."""
    if isinstance(value, dict):
        return {k: json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_shape(v) for v in value]
    return type(value).__name__
