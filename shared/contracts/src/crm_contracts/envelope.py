"""The envelope every event travels in, whatever its type and version.

Wire format: the Kafka value is the envelope as UTF-8 JSON; the Kafka key is
``partition_key`` (the aggregate id, so one aggregate's events stay in order);
headers repeat ``event_type``, ``schema_version`` and ``event_id`` so routers and
dead-letter tooling can read them without parsing the body.

Timestamps (the envelope's and every event's) are RFC 3339 strings with a zone
(``2026-01-31T12:00:00Z``, ``...+02:00``): what the JSON Schemas' ``date-time``
format always said. Numbers (``"occurred_at": 12`` used to become 1970), dates
without a time and times without a zone are schema-invalid.

Event ids (``event_id``): unique per event, any UUID. Events emitted since 2026-12-07 carry a
version-7 UUID (RFC 9562: the Unix time in milliseconds the id was made, then 74 random bits;
:data:`new_event_id`), events made before a random version-4 one: both are valid, and a
consumer compares ids, never reads a version, a time or an order from them. The id's
millisecond tells nothing an event does not carry already (``occurred_at``, ``produced_at``).
Time-ordered ids let every consumer's ledger and whatever it keys by a consumed event's id take
new keys at the index's edge (docs/performance.md, "Twenty-third session, eventids").

Plausible time, checked by consumers (:func:`implausible_time`): an envelope's
``occurred_at`` and ``produced_at`` lie within [now - ``MAX_EVENT_AGE``,
now + ``MAX_CLOCK_SKEW``]. An event outside it is dead-lettered with reason
``implausible_time``, never clamped, so it cannot reach a latency figure.
``MAX_EVENT_AGE`` (3 years) exceeds the longest topic retention (365 days) so a
full replay is always plausible; ``MAX_CLOCK_SKEW`` (5 minutes) tolerates
producer clocks running ahead of the consumer's.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import SchemaValidator, core_schema

from crm_contracts import uuids

MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_EVENT_AGE = timedelta(days=3 * 365)

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


new_event_id = uuids.uuid7
"""Every emitted event's id: a version-7 (time-ordered) UUID, made now."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _rfc3339_only(value: object) -> object:
    """Let through datetimes built in code and RFC 3339 strings; refuse numbers and the rest."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("expected an RFC 3339 timestamp with a zone, e.g. 2026-01-31T12:00:00Z")


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)]
"""A zone-aware instant; on the wire only an RFC 3339 string with a zone."""


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(
        default_factory=new_event_id,
        description="Unique per event: a UUID of any version (version 7, time-ordered, since 2026-12-07)",
    )
    event_type: str = Field(min_length=1, description="e.g. 'lead.qualified'")
    schema_version: int = Field(ge=1, strict=True)  # "1" or 1.0 is not a version
    occurred_at: Timestamp = Field(description="When the business fact happened (UTC)")
    produced_at: Timestamp | None = Field(
        default=None, description="When the outbox relay handed it to the broker"
    )
    source: str = Field(min_length=1, description="The emitting service")
    correlation_id: str = Field(min_length=1, description="Ties one customer journey together")
    causation_id: str | None = Field(default=None, description="event_id of the cause, if any")
    partition_key: str = Field(min_length=1, description="The aggregate id")
    payload: dict[str, Any]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("event_type", self.event_type.encode()),
            ("schema_version", str(self.schema_version).encode()),
            ("event_id", str(self.event_id).encode()),
            ("correlation_id", self.correlation_id.encode()),
        ]


_object_setattr = object.__setattr__


def built(values: dict[str, Any], fields_set: set[str]) -> Envelope:
    """An :class:`Envelope` holding ``values`` (every field, as validation would keep them) without
    validating them again: for envelopes made by code from what is valid already (a validated
    event's payload, :func:`crm_contracts.registry.envelope_for`; a copy with changed fields,
    :func:`replaced`). What ``model_construct`` does, without its walk over the fields and their
    defaults (which cost as much as the validation: 4 us per envelope, on every emitted event;
    docs/performance.md, "Fourteenth session, bulk"). ``fields_set``: what ``model_fields_set``
    answers (the fields the caller gave, as validation would note them)."""
    envelope = Envelope.__new__(Envelope)
    _object_setattr(envelope, "__dict__", values)
    _object_setattr(envelope, "__pydantic_fields_set__", fields_set)
    _object_setattr(envelope, "__pydantic_extra__", None)
    _object_setattr(envelope, "__pydantic_private__", None)
    return envelope


def replaced(envelope: Envelope, **changes: Any) -> Envelope:
    """``envelope.model_copy(update=changes)`` (the same fields, fields set and values, nothing
    validated), without pydantic's copy machinery: half its CPU (sealing copies every event it
    seals, crm_platform.shredding)."""
    if not changes.keys() <= _FIELDS:
        raise ValueError(f"not fields of an envelope: {sorted(changes.keys() - _FIELDS)}")
    return built({**envelope.__dict__, **changes}, envelope.__pydantic_fields_set__ | changes.keys())


_FIELDS = frozenset(Envelope.model_fields)


def implausible_time(envelope: Envelope, *, now: datetime | None = None) -> str | None:
    """Why the envelope's times are outside the plausible window, or None when they are fine."""
    now = now or utcnow()
    earliest, latest = now - MAX_EVENT_AGE, now + MAX_CLOCK_SKEW
    for name in ("occurred_at", "produced_at"):
        value: datetime | None = getattr(envelope, name)
        if value is None:
            continue
        try:
            instant = value.astimezone(UTC)
        except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00
            return f"{name} {value.isoformat()} cannot be expressed in UTC"
        if instant > latest:
            return f"{name} {instant.isoformat()} is in the future (more than {MAX_CLOCK_SKEW} ahead)"
        if instant < earliest:
            return f"{name} {instant.isoformat()} is in the past (older than {MAX_EVENT_AGE.days} days)"
    return None


# _RFC3339 for pydantic-core's own regex engine: ASCII digits only (``\d`` is any Unicode digit:
# a subset of what _RFC3339 matches), anchored at both ends as ``fullmatch`` is.
_RFC3339_ASCII = "^" + _RFC3339.pattern.replace(r"\d", "[0-9]") + "$"


def _for_parsed_json(node: Any) -> Any:
    """A copy of a core schema in which each :data:`Timestamp`'s Python check (``_rfc3339_only``)
    is made by pydantic-core: a string matching ``_RFC3339_ASCII``, then the same datetime schema.
    For a parsed JSON document only (no datetime instance in it, which the Python check lets by)."""
    if isinstance(node, dict):
        function = node.get("function")
        if node.get("type") == "function-before" and function and function.get("function") is _rfc3339_only:
            return core_schema.chain_schema(
                [core_schema.str_schema(pattern=_RFC3339_ASCII), _for_parsed_json(node["schema"])]
            )
        return {key: _for_parsed_json(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_for_parsed_json(value) for value in node]
    return node


def parsed_json_validator() -> Callable[[Any], Envelope]:
    """An :class:`Envelope` from a parsed JSON document, by a validator that accepts no document
    ``Envelope.model_validate`` refuses and makes the same envelope of one it accepts, except that
    the payload is taken as it is, not copied into a new dict and not checked to be one: the caller
    checks ``type(envelope.payload) is dict`` (a parsed object's keys are strings). 2 us less than
    ``model_validate`` per envelope (the timestamps' Python check, the payload's copy;
    docs/performance.md, "Twenty-eighth session, workercpu"). What it refuses, the caller reads
    again with ``model_validate``, whose errors are the contract's."""
    schema = _for_parsed_json(Envelope.__pydantic_core_schema__)
    fields = schema["schema"]["fields"]
    fields["payload"] = {**fields["payload"], "schema": core_schema.any_schema()}
    # pydantic-core builds a model schema naming a complete model class with that class's own
    # validator (its "prebuilt" one), whatever the schema says: Envelope is marked incomplete
    # while this one is built (test_contract_timestamps.py holds it).
    type.__setattr__(Envelope, "__pydantic_complete__", False)
    try:
        return SchemaValidator(schema).validate_python
    finally:
        type.__setattr__(Envelope, "__pydantic_complete__", True)
