"""Raw Kafka value -> validated event, or the reason it goes to the dead-letter topic.

Same reasons as the platform consumer (``crm_platform.consumer``) so dead-letter
tooling reads every department's DLQ alike: ``malformed`` (not an envelope at all),
``schema_invalid`` (a JSON object that fails the envelope or payload contract),
``unknown_version`` (a type/version pair this build does not know), and
``handler_error`` (a bug in our own processing, raised by the worker).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from crm_contracts import Envelope, Event, UnknownEventError, decode
from pydantic import ValidationError

MALFORMED = "malformed"
SCHEMA_INVALID = "schema_invalid"
UNKNOWN_VERSION = "unknown_version"
HANDLER_ERROR = "handler_error"

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


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, TypeError):
        return False


def parse(raw: bytes | None) -> Accepted | Rejected:
    """Validate the envelope, then the payload against its (type, version) contract."""
    if raw is None:
        return Rejected(MALFORMED, "empty message value (tombstone)")
    try:
        envelope = Envelope.from_bytes(raw)
    except ValidationError as exc:
        reason = SCHEMA_INVALID if _is_json_object(raw) else MALFORMED
        return Rejected(reason, _short(str(exc)))
    try:
        event = decode(envelope)
    except UnknownEventError as exc:
        return Rejected(UNKNOWN_VERSION, str(exc), envelope.event_type)
    except ValidationError as exc:
        return Rejected(SCHEMA_INVALID, _short(str(exc)), envelope.event_type)
    return Accepted(envelope, event)


Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


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
    """The original headers (minus any earlier ``dlq_*``) plus where and why it failed."""
    pairs = original.items() if isinstance(original, Mapping) else (original or ())
    kept = [(str(k), bytes(v or b"")) for k, v in pairs if not str(k).startswith("dlq_")]
    return [
        *kept,
        ("dlq_reason", reason.encode()),
        ("dlq_error", error[:2000].encode()),
        ("dlq_consumer_group", consumer_group.encode()),
        ("dlq_source_topic", topic.encode()),
        ("dlq_source_partition", str(partition).encode()),
        ("dlq_source_offset", str(offset).encode()),
        ("dlq_failed_at", failed_at.isoformat().encode()),
    ]
