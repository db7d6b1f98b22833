"""Response models of the analytics API (seconds for every latency)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, RootModel


class StageCounts(BaseModel):
    captured: int = Field(description="Distinct leads captured (lead.captured, merged=false)")
    qualified: int = Field(description="Distinct leads qualified (lead.qualified)")
    accepted: int = Field(description="Distinct leads accepted by sales (lead.verdict accepted)")
    won: int = Field(description="Distinct deals won (deal.won)")
    onboarded: int = Field(description="Distinct deals whose onboarding started")


class Conversion(BaseModel):
    """Ratios of the stage counts; null while the earlier stage is empty."""

    captured_to_qualified: float | None
    qualified_to_accepted: float | None
    accepted_to_won: float | None
    won_to_onboarded: float | None
    captured_to_won: float | None


class FunnelOut(BaseModel):
    stages: StageCounts
    conversion: Conversion
    updated_at: datetime | None = Field(description="When the worker wrote the snapshot")


class LatencyStats(BaseModel):
    count: int = Field(description="Exact number of samples")
    p50: float | None = Field(description="Seconds; about 1 % relative error (log buckets)")
    p95: float | None
    p99: float | None


class HandoffLatency(BaseModel):
    transport: LatencyStats = Field(description="Event occurred -> stored by the receiver")
    business: LatencyStats | None = Field(
        description="Handed off -> first action by the receiver; null where not defined"
    )


class ChannelsOut(RootModel[dict[str, StageCounts]]):
    """Stage counts per source channel (``unknown`` until the lead's channel is seen)."""


class HandoffsOut(RootModel[dict[str, HandoffLatency]]):
    """Latency percentiles per handoff name."""


class SummaryOut(BaseModel):
    funnel: FunnelOut
    channels: dict[str, StageCounts]
    handoffs: dict[str, HandoffLatency]
    updated_at: datetime | None
