"""Traces across departments: W3C trace context through HTTP hops, the outbox and Kafka.

One customer's journey (capture, qualified, accepted, won, onboarding) is one trace,
although it crosses four processes and several separate user requests:

* **HTTP**: :class:`TracingEdge` (plain ASGI, outermost) starts a SERVER span per
  request as the child of the caller's ``traceparent``; the gateway injects its
  context into the request it forwards (:func:`inject`), so gateway -> service is
  one hop of one trace.
* **Outbox**: an event's context is taken when it is *stored*, not when it is
  published: :func:`outbox_contexts` starts a PRODUCER span per emitted event inside
  the writing transaction and the outbox row keeps its ``traceparent``/``tracestate``
  (``trace`` field). The relay puts them in the Kafka record's headers, so a
  publish after a broker outage, a re-sent handoff or an audited republish still
  continues the trace that caused the event.
* **Consumers**: :func:`consuming` extracts the record's context and runs the
  handler in a CONSUMER span, its child; what the handler emits continues it.
* **Journeys**: a user's later request about the same customer (a rep accepting the
  lead, a manager winning the deal) is a new HTTP request with a trace of its own.
  Each service remembers, per correlation id (the journey: the lead's id across every
  department), the context of the first event it stored or consumed in that journey
  (``trace_journeys``, expiring after 90 days); an event emitted from a request of
  another trace is parented on the journey and *linked* to the request's span. So the
  journey is one tree and each user action stays reachable from it.

Export: the SDK is installed only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and ``OTEL_SDK_DISABLED`` is not
``true``; spans then go over OTLP/HTTP through a batch processor, with the standard
``OTEL_*`` variables (service name, resource attributes, headers, sampler). Unset,
tracing is off: nothing is created, parsed or stored (each hook costs one check), no
exporter exists to log errors. Every service must have it on for the chain to be
whole (a service with it off passes no context on).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pymongo.errors import PyMongoError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from crm_contracts import Envelope
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger("crm.tracing")

JOURNEYS = "trace_journeys"
JOURNEY_TTL_SECONDS = 90 * 24 * 3600
TRACE_FIELD = "trace"  # on an outbox row: {"traceparent": ..., "tracestate": ...}
HEADERS = ("traceparent", "tracestate")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
Carrier = dict[str, str]


def configure(service_name: str) -> bool:
    """Install OTLP export once per process when the environment asks for it; True if on."""
    if _provider is not None:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES decide; the service's own name otherwise.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    log.info("traces exported over OTLP/HTTP")
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace through ``provider`` (None: off). Tests install one with an in-memory exporter."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("crm_platform") if provider is not None else None
    _known.clear()
    _cached.clear()


def capture() -> Context | None:
    """The current context, to start an event's span from later (None when tracing is off)."""
    return otel_context.get_current() if _tracer is not None else None


def enabled() -> bool:
    return _tracer is not None


def flush() -> None:
    """Export what the batch processor holds (a stopping app; the SDK also flushes at exit)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=2000)


# -- carriers -------------------------------------------------------------------
def inject(context: otel_context.Context | None = None) -> Carrier:
    """``traceparent``/``tracestate`` of ``context`` (default: the current one)."""
    carrier: Carrier = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    return _PROPAGATOR.extract(carrier)


def kafka_headers(carrier: Mapping[str, str] | None) -> list[tuple[str, bytes]]:
    """A stored carrier as Kafka record headers."""
    return [(k, v.encode()) for k, v in (carrier or {}).items() if k in HEADERS and isinstance(v, str)]


def carrier_from_headers(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> Carrier:
    """The trace headers of a Kafka record (aiokafka's pairs or faust's mapping)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    out: Carrier = {}
    for key, value in pairs:
        if key in HEADERS and isinstance(value, bytes | bytearray):
            out[key] = bytes(value).decode("latin-1")
    return out


# -- consumers ------------------------------------------------------------------
@contextmanager
def _consumer_span(
    headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None, topic: str, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    assert _tracer is not None
    parent = extract(carrier_from_headers(headers))
    with _tracer.start_as_current_span(
        f"{topic} process", context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)
    ) as span:
        yield span


def consuming(
    headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None,
    *,
    topic: str,
    envelope: Envelope | None = None,
    group: str = "",
) -> AbstractContextManager[Any]:
    """A CONSUMER span for one record, child of the context in its headers (a no-op when off)."""
    if _tracer is None:
        return nullcontext()
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if envelope is not None:
        attributes.update(_envelope_attributes(envelope))
    return _consumer_span(headers, topic, attributes)


def _envelope_attributes(envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.message.id": str(envelope.event_id),
        "crm.event_type": envelope.event_type,
        "crm.correlation_id": envelope.correlation_id,
        "crm.source": envelope.source,
    }


# -- the outbox -----------------------------------------------------------------
async def outbox_contexts(
    db: AsyncDatabase[dict[str, Any]],
    session: AsyncClientSession,
    emitted: Sequence[tuple[Envelope, str, Context | None]],
) -> list[Carrier | None]:
    """One PRODUCER span per ``(envelope, topic, context it was emitted in)`` stored now; the
    carriers for their outbox rows.

    Parent: the span the event was emitted in, unless the event belongs to a journey this
    service already knows under another trace (a user's request about an existing
    customer): then the journey's context, with a link to that span. Off: all None.
    """
    if _tracer is None or not emitted:
        return [None] * len(emitted)
    journeys = await _journeys(db, session, {env.correlation_id for env, _, _ in emitted})
    out: list[Carrier | None] = []
    for env, topic, emitted_in in emitted:
        current = trace.get_current_span(emitted_in).get_span_context()
        parent, links = emitted_in, []
        journey = journeys.get(env.correlation_id)
        if journey is not None:
            ctx = trace.get_current_span(extract(journey)).get_span_context()
            if ctx.is_valid and ctx.trace_id != current.trace_id:
                parent = extract(journey)
                links = [Link(current)] if current.is_valid else []
        span = _tracer.start_span(
            f"{topic} create",
            context=parent,
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "create",
                "messaging.destination.name": topic,
                **_envelope_attributes(env),
            },
        )
        span.end()
        out.append(inject(trace.set_span_in_context(span)))
    return out


async def _journeys(
    db: AsyncDatabase[dict[str, Any]], session: AsyncClientSession, correlation_ids: set[str]
) -> dict[str, Carrier]:
    """The stored journeys of these correlation ids: from memory, else one query."""
    found: dict[str, Carrier] = {}
    for cid in correlation_ids:
        if (carrier := _cached.get((db.name, cid))) is not None:
            _cached.move_to_end((db.name, cid))
            found[cid] = carrier
    missing = sorted(correlation_ids - found.keys())
    if missing:
        docs = await db[JOURNEYS].find({"_id": {"$in": missing}}, session=session).to_list()
        for doc in docs:
            if isinstance(doc.get("carrier"), dict):
                found[doc["_id"]] = doc["carrier"]
                _bounded_put(_cached, (db.name, doc["_id"]), doc["carrier"])
                _remembered(db.name, doc["_id"])
    return found


# Journeys read from a database (they never change: first writer wins), and those this
# process knows to be stored (never written again); both bounded, least recently used out.
_cached: OrderedDict[tuple[str, str], Carrier] = OrderedDict()
_known: OrderedDict[tuple[str, str], None] = OrderedDict()
_KNOWN_MAX = 10_000


def _bounded_put(cache: OrderedDict[tuple[str, str], Any], key: tuple[str, str], value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _KNOWN_MAX:
        cache.popitem(last=False)


def _remembered(database: str, correlation_id: str) -> bool:
    """Whether the journey was already remembered in ``database``; marks it."""
    key = (database, correlation_id)
    if key in _known:
        _known.move_to_end(key)
        return True
    _bounded_put(_known, key, None)
    return False


async def remember_journeys(
    db: AsyncDatabase[dict[str, Any]], carriers: Mapping[str, Carrier | None]
) -> None:
    """Keep each journey's first context, after the commit that stored it (first writer wins).

    One insert per journey and process: later events of a known journey cost nothing.
    Outside the transaction on purpose: two transactions starting the same journey
    must not conflict over it. A failure only means a later request of that journey
    starts a trace of its own.
    """
    if _tracer is None:
        return
    now = datetime.now(UTC)
    docs = [
        {"_id": cid, "carrier": carrier, "created_at": now}
        for cid, carrier in carriers.items()
        if carrier and not _remembered(db.name, cid)
    ]
    if not docs:
        return
    try:
        await db[JOURNEYS].insert_many(docs, ordered=False)
    except PyMongoError as exc:  # duplicates: another replica or event was first, as intended
        if "E11000" not in str(exc):
            log.debug("journey contexts not stored: %s", exc)


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db[JOURNEYS].create_index("created_at", expireAfterSeconds=JOURNEY_TTL_SECONDS, name="journey_ttl")


def current_carrier() -> Carrier | None:
    """The current span's carrier, when tracing is on and a span is current."""
    if _tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    return inject()


# -- HTTP -----------------------------------------------------------------------
class TracingEdge:
    """A SERVER span per HTTP request, child of the caller's ``traceparent`` (plain ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _tracer is None or scope["type"] != "http" or scope.get("path") in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        parent = extract({k: headers[k] for k in HEADERS if k in headers})
        method = scope.get("method", "GET")
        with _tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        ) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _response_started(span, message["status"])
                await send(message)

            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


def _response_started(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
