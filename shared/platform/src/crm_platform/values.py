"""Bounded value types for every service's request models.

Python's ``datetime`` and ``int`` are wider than what the services can process
or store: ``0001-01-01T00:00:00+01:00`` overflows when converted to UTC, and an
integer above 2^63 cannot be stored in BSON. Both used to surface as 500s. The
types here refuse such input at the edge with a 422 naming the field.

* :data:`Timestamp`: an RFC 3339 date-time **with** a zone, between
  :data:`MIN_TIMESTAMP` and :data:`MAX_TIMESTAMP`, normalised to UTC.
* :data:`CustomValue`: what a free-form custom field may hold: a non-empty
  string (max 1000), a boolean, a 64-bit integer, a finite number, or a list of
  up to 100 of those.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
)

MIN_TIMESTAMP = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _rfc3339_only(value: Any) -> Any:
    # Lax pydantic would read 12 as 1970-01-01T00:00:12Z; a timestamp is a string.
    if isinstance(value, int | float):
        raise ValueError("a timestamp is an RFC 3339 string with a zone, not a number")
    return value


def _bounded_utc(value: datetime) -> datetime:
    # Check the wall-clock year first: converting year 1 or 9999 to UTC may overflow.
    if not MIN_TIMESTAMP.year <= value.year < MAX_TIMESTAMP.year:
        raise ValueError(f"timestamp must be between {MIN_TIMESTAMP.date()} and {MAX_TIMESTAMP.date()} (UTC)")
    utc = value.astimezone(UTC)
    if not MIN_TIMESTAMP <= utc < MAX_TIMESTAMP:
        raise ValueError(f"timestamp must be between {MIN_TIMESTAMP.date()} and {MAX_TIMESTAMP.date()} (UTC)")
    return utc


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_only),
    AfterValidator(_bounded_utc),
    Field(description="RFC 3339 date-time with a zone (e.g. 2026-03-01T09:30:00Z), years 1900-2199"),
]


def _in_int64(value: Any) -> Any:
    # Checked before the union, so a huge integer is refused instead of becoming a float.
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("integers must fit in 64 bits (-2^63 .. 2^63-1)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value


Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
InRange = BeforeValidator(_in_int64)
"""Put on a union holding Int64 and FiniteFloat, so a huge integer is refused, not made a float."""

CustomScalar = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
    | StrictBool
    | Int64
    | FiniteFloat,
    InRange,
]
CustomValue = CustomScalar | Annotated[list[CustomScalar], Field(max_length=100)]

MAX_LIST = 100


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _in_int64(value)
    if isinstance(value, str) and 0 < len(value.strip()) <= 1000:
        return value.strip()
    raise ValueError("must be a non-empty string (max 1000), a boolean or a number")


def custom_value(value: Any) -> Any:
    """Validate a value a model took as an extra (free-form) field; ``ValueError`` if unfit."""
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ValueError(f"a list holds at most {MAX_LIST} values")
        return [_scalar(v) for v in value]
    return _scalar(value)
