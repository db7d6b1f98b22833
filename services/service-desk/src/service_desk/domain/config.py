"""The service desk's configuration: onboarding checklist and SLA targets per priority."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class SlaTarget(BaseModel):
    """How long the desk has for a first response and for the resolution, in hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_response_hours: float = Field(gt=0, le=24 * 365)
    resolution_hours: float = Field(gt=0, le=24 * 365)

    @model_validator(mode="after")
    def _resolution_not_before_first_response(self) -> SlaTarget:
        if self.resolution_hours < self.first_response_hours:
            raise ValueError("resolution_hours must be at least first_response_hours")
        return self

    @property
    def first_response(self) -> timedelta:
        return timedelta(hours=self.first_response_hours)

    @property
    def resolution(self) -> timedelta:
        return timedelta(hours=self.resolution_hours)


DEFAULT_CHECKLIST: tuple[str, ...] = ("Kickoff call", "Technical setup", "Training", "First value review")
DEFAULT_SLA: dict[Priority, SlaTarget] = {
    Priority.URGENT: SlaTarget(first_response_hours=1, resolution_hours=8),
    Priority.HIGH: SlaTarget(first_response_hours=4, resolution_hours=24),
    Priority.NORMAL: SlaTarget(first_response_hours=8, resolution_hours=72),
    Priority.LOW: SlaTarget(first_response_hours=24, resolution_hours=120),
}
DEFAULT_AT_RISK_FRACTION = 0.75


def slugify(title: str) -> str:
    """The stable key of a checklist item: 'First value review' -> 'first-value-review'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class ServiceDeskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    onboarding_checklist: list[str] = Field(
        min_length=1,
        max_length=30,
        description="Titles of the onboarding items every new account gets, in order",
    )
    sla: dict[Priority, SlaTarget] = Field(description="SLA targets for every ticket priority")
    at_risk_fraction: float = Field(
        default=DEFAULT_AT_RISK_FRACTION,
        gt=0,
        lt=1,
        description="An open ticket is 'at_risk' once this fraction of a target's time has elapsed",
    )

    @field_validator("onboarding_checklist")
    @classmethod
    def _checklist_titles(cls, titles: list[str]) -> list[str]:
        cleaned = [t.strip() for t in titles]
        seen: set[str] = set()
        for title in cleaned:
            if not title or len(title) > 200:
                raise ValueError("each checklist item needs a title of 1 to 200 characters")
            key = slugify(title)
            if not key:
                raise ValueError(f"checklist item {title!r} needs at least one letter or digit")
            if key in seen:
                raise ValueError(f"checklist item {title!r} duplicates another item")
            seen.add(key)
        return cleaned

    @field_validator("sla")
    @classmethod
    def _every_priority(cls, sla: dict[Priority, SlaTarget]) -> dict[Priority, SlaTarget]:
        missing = [p.value for p in Priority if p not in sla]
        if missing:
            raise ValueError(f"SLA targets missing for priorities: {', '.join(missing)}")
        return sla

    def target(self, priority: Priority) -> SlaTarget:
        return self.sla[priority]


def default_config() -> ServiceDeskConfig:
    return ServiceDeskConfig(
        onboarding_checklist=list(DEFAULT_CHECKLIST),
        sla=dict(DEFAULT_SLA),
        at_risk_fraction=DEFAULT_AT_RISK_FRACTION,
    )


@dataclass(frozen=True)
class ConfigRecord:
    """The configuration as stored, with who changed it last and when."""

    config: ServiceDeskConfig
    updated_at: datetime | None = None
    updated_by: str | None = None
