"""The envelope every event travels in, whatever its type and version.

Wire format: the Kafka value is the envelope as UTF-8 JSON; the Kafka key is
``partition_key`` (the aggregate id, so one aggregate's events stay in order);
headers repeat ``event_type``, ``schema_version`` and ``event_id`` so routers and
dead-letter tooling can read them without parsing the body.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str = Field(min_length=1, description="e.g. 'lead.qualified'")
    schema_version: int = Field(ge=1)
    occurred_at: datetime = Field(description="When the business fact happened (UTC)")
    produced_at: datetime | None = Field(
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
