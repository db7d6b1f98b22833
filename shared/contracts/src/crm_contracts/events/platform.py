"""Events the platform library emits on behalf of any receiving service."""

from __future__ import annotations

from typing import ClassVar

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp


class HandoffReceivedV1(Event):
    """Emitted by the receiver, in the same transaction as the handoff's effect."""

    event_type: ClassVar[str] = "handoff.received"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.HANDOFF_RECEIPTS

    handoff: str
    handoff_event_id: str
    handoff_event_type: str
    from_department: str
    to_department: str
    occurred_at: Timestamp
    stored_at: Timestamp
    transport_latency_seconds: float

    def partition_key(self) -> str:
        return self.handoff_event_id
