"""Response models of the analytics API (seconds for every latency)."""

from __future__ import annotations

from datetime import date, datetime

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


class DayLatencyOut(BaseModel):
    day: date = Field(description="The UTC day the samples ended (stored by the receiver; the business step)")
    count: int = Field(description="Exact number of samples that day")
    p50: float | None = Field(description="Seconds; about 1 % relative error (log buckets)")
    p90: float | None


class HandoffSeries(BaseModel):
    transport: list[DayLatencyOut] = Field(description="Event occurred -> stored by the receiver, per day")
    business: list[DayLatencyOut] | None = Field(
        description="Handed off -> the receiver's first action, per day; null where not defined"
    )


class SeriesOut(BaseModel):
    """Handoff latency over time: per handoff, each day's samples (days without one left out)."""

    days: int = Field(description="The window: the last ``days`` UTC days up to today")
    handoffs: dict[str, HandoffSeries]
    updated_at: datetime | None = Field(description="When the worker wrote the snapshot")


class SummaryOut(BaseModel):
    funnel: FunnelOut
    channels: dict[str, StageCounts]
    handoffs: dict[str, HandoffLatency]
    updated_at: datetime | None


# -- KPIs (analytics.domain.kpis) ---------------------------------------------------------------


class Percentiles(BaseModel):
    count: int = Field(description="Exact number of samples")
    p50: float | None = Field(description="Seconds (nearest rank)")
    p90: float | None


class TicketKpis(BaseModel):
    opened: int = Field(description="Tickets opened in the period")
    resolved: int = Field(description="Tickets resolved in the period")
    resolution_rate: float | None = Field(description="Share of the period's opened tickets resolved since")
    sla_attainment: float | None = Field(
        description="Share of the period's resolved tickets within both SLAs"
    )
    first_response: dict[str, Percentiles] = Field(
        description="Per priority, of tickets resolved in the period"
    )
    resolution: dict[str, Percentiles] = Field(description="Per priority, of tickets resolved in the period")


class CsatKpis(BaseModel):
    responses: int
    average: float | None = Field(description="1-5, answered by customers through their survey link")
    satisfied_share: float | None = Field(description="Share of answers 4 or 5")


class NpsKpis(BaseModel):
    responses: int
    promoters: int = Field(description="Answers 9-10")
    detractors: int = Field(description="Answers 0-6")
    score: float | None = Field(description="% promoters - % detractors, -100..100")


class RevenueRetention(BaseModel):
    previous: float = Field(description="Value of the contracts up for renewal in the period")
    gross_retention: float | None = Field(description="Kept value (never above the previous) / previous")
    net_retention: float | None = Field(description="New value (expansion counts) / previous")


class RenewalKpis(BaseModel):
    recorded: int = Field(description="Renewals due in the period (or decided in it, ahead of their date)")
    renewed: int
    downgraded: int
    churned: int
    renewal_rate: float | None = Field(description="(renewed + downgraded) / recorded")
    logo_churn: float | None = Field(description="churned / recorded")
    revenue_retention: dict[str, RevenueRetention] = Field(description="Per currency")


class CheckinKpis(BaseModel):
    active_accounts: int = Field(description="Accounts onboarded and not churned during the period")
    covered_accounts: int = Field(description="Of those, accounts with a check-in held in the period")
    coverage: float | None


class DepartmentItems(BaseModel):
    raised: int = Field(description="Action items raised for the department in the period")
    closed: int = Field(description="Done or declined in the period")
    time_to_close: Percentiles = Field(description="Raised -> done or declined, of the items closed")


class TeamKpis(BaseModel):
    tickets: TicketKpis
    csat: CsatKpis
    nps: NpsKpis
    renewals: RenewalKpis
    checkins: CheckinKpis
    action_items: dict[str, DepartmentItems] = Field(description="Per owning department (team 'all' only)")


class PeriodKpis(BaseModel):
    period: str = Field(description="2026-W49, 2026-12 or 2026-Q4")
    start: datetime
    end: datetime
    teams: dict[str, TeamKpis] = Field(description="'all' and each team (the accounts' tier)")


class OpenItems(BaseModel):
    open: int
    overdue: int = Field(description="Open past their due date")
    escalated: int = Field(description="Open and escalated to the department's manager")


class DayPercentiles(BaseModel):
    day: date = Field(description="The UTC day the receiver acted")
    count: int
    p50: float | None = Field(description="Seconds (nearest rank)")
    p90: float | None


class WindowLatency(BaseModel):
    count: int = Field(description="Actions taken in the window plus items still waiting")
    p50: float | None = Field(description="Seconds; a waiting item counts by its age")
    p90: float | None
    p99: float | None


class BusinessLatency(BaseModel):
    windows: dict[str, WindowLatency] = Field(description="last_hour, last_day, last_30_days")
    pending: int = Field(description="Handed off, not acted on yet")
    oldest_pending_seconds: float | None
    daily: list[DayPercentiles] = Field(
        default_factory=list, description="Per UTC day of the last 90: the actions taken that day"
    )


class LeadFigures(BaseModel):
    captured: int
    qualified: int
    accepted: int
    rejected: int
    recycled: int
    acceptance_rate: float | None = Field(description="accepted / (accepted + rejected + recycled)")
    verdict_reasons: dict[str, int] = Field(description="Sales' reason codes of rejections and recycles")


class MarketingKpis(BaseModel):
    channels: dict[str, LeadFigures] = Field(description="Per source channel of the lead's first capture")
    campaigns: dict[str, LeadFigures] = Field(description="Per campaign ('none' without one)")


class CustomFieldFigures(BaseModel):
    """One custom field over the records' latest values (their events' extension maps)."""

    type: str = Field(description="choice, number, money or date (text is never sent to analytics)")
    count: int = Field(description="Records with a value")
    values: dict[str, int] | None = Field(default=None, description="choice: records per value")
    sum: float | None = Field(default=None, description="number: the values' sum")
    sum_by_currency: dict[str, float] | None = Field(default=None, description="money: sum per currency")
    earliest: str | None = Field(default=None, description="date: the earliest value")
    latest: str | None = Field(default=None, description="date: the latest value")


class KpisOut(BaseModel):
    computed_at: datetime | None = Field(description="When the worker computed them; null: not yet")
    period_kind: str
    periods: list[PeriodKpis] = Field(description="The latest periods, newest first")
    action_items: dict[str, OpenItems] = Field(description="Per owning department, now")
    business_latency: dict[str, BusinessLatency] = Field(description="Handed off -> first human action")
    marketing: MarketingKpis
    custom_fields: dict[str, dict[str, CustomFieldFigures]] = Field(
        default_factory=dict,
        description="Per record kind (lead, ...) and custom field key: the breakdown of the latest values",
    )


class ServiceKpisOut(BaseModel):
    computed_at: datetime | None
    period_kind: str
    periods: list[PeriodKpis]
    action_items: OpenItems = Field(description="Customer success' own queue, now")
    business_latency: dict[str, BusinessLatency] = Field(description="The handoffs customer success receives")


class MarketingKpisOut(BaseModel):
    computed_at: datetime | None
    marketing: MarketingKpis
    action_items: OpenItems = Field(description="Marketing's queue, now")
    business_latency: dict[str, BusinessLatency] = Field(description="The handoffs marketing receives")
