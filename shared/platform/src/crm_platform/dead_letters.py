"""Raw Kafka record -> a validated event, or the reason it goes to the dead-letter topic.

One classification for every consumer (the platform's :class:`~crm_platform.consumer.EventConsumer`
and the analytics faust worker), so dead-letter tooling reads every DLQ alike. The
reasons, in the order they are checked:

- ``too_large``: the value is over ``MAX_RECORD_BYTES`` (checked before parsing);
- ``malformed``: empty value or tombstone, invalid UTF-8, not JSON, not a JSON
  object, a number JSON cannot hold (``1e400``, a 5,000-digit integer, ``NaN``);
- ``too_deep``: objects/arrays nested deeper than ``MAX_DEPTH`` (an envelope needs
  about six levels);
- ``schema_invalid``: a JSON object that fails the envelope or payload contract
  (also a timestamp that is not an RFC 3339 string with a zone);
- ``wrong_source``: the envelope's ``source`` or ``event_type`` does not belong to
  the topic's owner in the topic table (a forged handoff);
- ``implausible_time``: occurred/produced outside the window of
  :func:`crm_contracts.envelope.implausible_time`;
- ``unknown_version``: a type/version pair this build does not know;
- ``schema_invalid`` again: a payload that fails its (type, version) contract;
- ``unreadable``: anything else that raised while reading the record (a bug here,
  never allowed to stop a partition).

``handler_error`` (raised by the consumer's own processing) and business reasons
raised by handlers complete the list. :func:`classify` never raises.

A record is first read the way a valid one can be (:func:`_accepted_at_once`): the checks
above, but the depth and numbers checked only where the payload's model lets a problem through
(:mod:`crm_platform.payload_bounds`) instead of walking every value (5% of the analytics
worker's replay). Only when all of that passes is it accepted there, with the envelope and event
the checks above give; any other record is read again by the checks above, in their order, so a
refused record gets the same reason and error as before (docs/performance.md, sixteenth
session, replay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pydantic_core
from crm_contracts import Envelope, Event, UnknownEventError, decode
from crm_contracts.envelope import implausible_time, parsed_json_validator
from crm_contracts.registry import REGISTRY, wrong_source
from pydantic import ValidationError

from crm_platform.payload_bounds import finite_check

TOO_LARGE = "too_large"
MALFORMED = "malformed"
TOO_DEEP = "too_deep"
SCHEMA_INVALID = "schema_invalid"
WRONG_SOURCE = "wrong_source"
UNKNOWN_VERSION = "unknown_version"
IMPLAUSIBLE_TIME = "implausible_time"
UNREADABLE = "unreadable"
HANDLER_ERROR = "handler_error"

MAX_RECORD_BYTES = 512 * 1024  # envelopes are a few KB; Kafka's default limit is 1 MiB
# Which strings the JSON parser shares through pydantic-core's string cache (``from_json``'s
# ``cache_strings``): ``"all"`` (its default) or ``"keys"``. The cache holds 16,384 strings of at
# most 64 characters; a stream's values (ids, timestamps, ciphertext) are nearly all new, so
# looking each one up and replacing an entry costs more than it saves: ``"keys"`` read a replayed
# ``lead.qualified`` in 3.0 us against 5.5 (docs/performance.md, twenty-third session, replay).
# A consumer that keeps a value for long shares it itself (``sys.intern``).
CacheStrings = Literal["all", "keys"]
MAX_DEPTH = 32
_MAX_ERROR = 1500


@dataclass(frozen=True)
class Accepted:
    envelope: Envelope
    event: Event


@dataclass(frozen=True)
class Rejected:
    reason: str
    error: str
    event_type: str | None = None


def short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


def classify(
    raw: bytes | None,
    *,
    topic: str | None = None,
    now: datetime | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
    cache_strings: CacheStrings = "all",
) -> Accepted | Rejected:
    """Validate one record's value as it arrived on ``topic``; never raises. ``cache_strings``:
    which of its strings the parser shares through its cache (:data:`CacheStrings`); the verdict
    is the same either way."""
    try:
        accepted = _accepted_at_once(raw, topic, now, max_bytes, cache_strings)
        return accepted if accepted is not None else _classify(raw, topic, now, max_bytes)
    except RecursionError:
        return Rejected(TOO_DEEP, "nested too deeply to read")
    except Exception as exc:  # any bug reading one record must not stop the partition
        return Rejected(UNREADABLE, short(f"{type(exc).__name__}: {exc}"))


def _classify(
    raw: bytes | None, topic: str | None, now: datetime | None, max_bytes: int
) -> Accepted | Rejected:
    if not raw:
        return Rejected(MALFORMED, "empty message value (tombstone)")
    if len(raw) > max_bytes:
        return Rejected(TOO_LARGE, f"{len(raw)} bytes (at most {max_bytes})")
    doc = _parsed(raw)
    if isinstance(doc, Rejected):
        return doc
    try:
        # The document parsed once above (bounds checked) is validated as it is: no second
        # parse of the bytes (``Envelope.from_bytes``), same rules (docs/performance.md).
        envelope = Envelope.model_validate(doc)
    except ValidationError as exc:
        return Rejected(SCHEMA_INVALID, short(str(exc)))
    if topic is not None:
        forged = wrong_source(topic, envelope)
        if forged is not None:
            return Rejected(WRONG_SOURCE, forged, envelope.event_type)
    problem = implausible_time(envelope, now=now)
    if problem is not None:
        return Rejected(IMPLAUSIBLE_TIME, problem, envelope.event_type)
    try:
        event = decode(envelope)
    except UnknownEventError as exc:
        return Rejected(UNKNOWN_VERSION, str(exc), envelope.event_type)
    except ValidationError as exc:
        return Rejected(SCHEMA_INVALID, short(str(exc)), envelope.event_type)
    return Accepted(envelope, event)


_validate_envelope = Envelope.__pydantic_validator__.validate_python
# The first read's envelope: refuses what ``_validate_envelope`` refuses, its payload not copied
# (crm_contracts.envelope.parsed_json_validator; 2 us of every record).
_read_envelope = parsed_json_validator()
# Per (type, version): the payload model's validation and its bounds check (None: walk the payload).
_payload_checks: dict[tuple[str, int], tuple[Callable[[Any], Event], Callable[[Any], bool] | None]] = {}


def _accepted_at_once(
    raw: bytes | None,
    topic: str | None,
    now: datetime | None,
    max_bytes: int,
    cache_strings: CacheStrings = "all",
) -> Accepted | None:
    """A valid record read without the walk over all of it, or None: then :func:`_classify`'s
    ordered checks read it again and say why.

    The same parse, envelope (read by :data:`_read_envelope`: it refuses what the contract's
    validation refuses, the payload not copied), source rule, plausible time and payload contract
    as those checks; then the walk's bounds: for a bounded payload model only its float places (once the model
    has accepted the payload, a non-finite number cannot hide elsewhere and its depth is the
    model's: :mod:`crm_platform.payload_bounds`), for any other the payload walked as the whole
    document would be (the envelope's other fields are scalars once validated). Anything that
    does not pass, or raises, is None. (The envelope validated straight from the bytes in JSON
    mode was 1.5-3 us faster still, but its payload's strings are not shared through the parser's
    string cache: the analytics worker kept 12 MB more of them at 200,000 events.)"""
    if not raw or len(raw) > max_bytes:
        return None
    try:
        doc = pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings=cache_strings)
        envelope = _read_envelope(doc)
        payload = envelope.payload
        if type(payload) is not dict:  # what Envelope's dict[str, Any] requires of a parsed payload
            return None
        if topic is not None and wrong_source(topic, envelope) is not None:
            return None
        if implausible_time(envelope, now=now) is not None:
            return None
        key = (envelope.event_type, envelope.schema_version)
        checks = _payload_checks.get(key) or _payload_checks_of(key)
        if checks is None:
            return None
        validate, bounded = checks
        event = validate(payload)
        if bounded is None:
            if _walk(payload, 2) is not None:
                return None
        elif not bounded(payload):
            return None
        return Accepted(envelope, event)
    except Exception:  # read again by the ordered checks, which say why
        return None


def _payload_checks_of(
    key: tuple[str, int],
) -> tuple[Callable[[Any], Event], Callable[[Any], bool] | None] | None:
    model = REGISTRY.get(key)
    if model is None:
        return None  # unknown_version, said by the ordered checks
    # The envelope is the document's first level, its payload the second. The model's validator
    # called directly: ``model_validate`` is that call behind a Python frame checking its options
    # (0.2-0.3 us of every record; docs/performance.md, twenty-second session, drainsales).
    validate = model.__pydantic_validator__.validate_python
    checks = _payload_checks[key] = (validate, finite_check(model, MAX_DEPTH - 1))
    return checks


def _parsed(raw: bytes) -> dict[str, Any] | Rejected:
    """The JSON object, parsed with a bounded (non-recursive-in-Python) parser, its shape
    checked; or why it cannot be read."""
    try:
        doc = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            return Rejected(TOO_DEEP, short(str(exc)))
        return Rejected(MALFORMED, short(f"not JSON: {exc}"))
    if not isinstance(doc, dict):
        return Rejected(MALFORMED, f"not a JSON object but a JSON {type(doc).__name__}")
    problem = _walk(doc)
    return doc if problem is None else problem


def _walk(doc: dict[str, Any], depth: int = 1) -> Rejected | None:
    """Depth and numbers of a parsed document (at ``depth``: a document's own is 1), iteratively
    (no Python recursion)."""
    stack: list[tuple[Any, int]] = [(doc, depth)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return Rejected(TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                return Rejected(MALFORMED, "a number out of range (not a finite double)")
    return None


Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None


def dead_letter_headers(
    original: Headers,
    *,
    reason: str,
    error: str,
    consumer_group: str,
    topic: str,
    partition: int,
    offset: int,
    failed_at: datetime,
) -> list[tuple[str, bytes]]:
    """The original headers (minus any earlier ``dlq_*``) plus where and why it failed.

    (``dlq_consumer_group``, ``dlq_source_topic``, ``dlq_source_partition``,
    ``dlq_source_offset``) identify the dead letter: tooling may deduplicate on it.
    """
    pairs = original.items() if isinstance(original, Mapping) else (original or ())
    kept = [(str(k), bytes(v or b"")) for k, v in pairs if not str(k).startswith("dlq_")]
    return [
        *kept,
        ("dlq_reason", reason.encode()),
        ("dlq_error", error[:2000].encode(errors="replace")),
        ("dlq_consumer_group", consumer_group.encode()),
        ("dlq_source_topic", topic.encode()),
        ("dlq_source_partition", str(partition).encode()),
        ("dlq_source_offset", str(offset).encode()),
        ("dlq_failed_at", failed_at.isoformat().encode()),
    ]


# A dead letter replayed onto its original topic (``crm-ops replay``) is meant for the one
# consumer group that parked it: every other group on that topic already handled the record
# (or parked it itself) and skips the copy.
REPLAY_FOR = "crm_replay_for"
REPLAYED_FROM = "crm_replayed_from"


def replay_target(headers: Headers) -> str | None:
    """The consumer group a replayed record is meant for, or None for an ordinary record."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in pairs:
        if key == REPLAY_FOR and isinstance(value, bytes | bytearray):
            return bytes(value).decode(errors="replace")
    return None


def skips_replay(headers: Headers, group: str) -> bool:
    """Whether a consumer in ``group`` must skip this record (a replay meant for another group)."""
    target = replay_target(headers)
    return target is not None and target != group
