"""Customer success configuration: account tiers, their check-in cadence, renewals, surveys.

Stored in the desk's database (``GET/PUT /success/config``); pure validation here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from crm_platform.money import Amount
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service_desk.domain.config import slugify


class TierConfig(BaseModel):
    """One account tier: which accounts fall in it and how closely customer success follows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=50, description="e.g. strategic, growth, standard")
    min_value: Amount = Field(
        default=Decimal(0), description="A new account whose contract value is at least this gets the tier"
    )
    checkin_every_days: int = Field(ge=1, le=366, description="Check-in cadence")
    named_account_manager: bool = Field(
        default=False, description="Accounts of this tier must have a named account manager"
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        slug = slugify(name)
        if not slug or slug != name:
            raise ValueError("a tier name is lower-case letters, digits and '-' (e.g. 'strategic')")
        return slug


DEFAULT_TIERS: tuple[TierConfig, ...] = (
    TierConfig(
        name="strategic", min_value=Decimal(250000), checkin_every_days=30, named_account_manager=True
    ),
    TierConfig(name="growth", min_value=Decimal(50000), checkin_every_days=90),
    TierConfig(name="standard", min_value=Decimal(0), checkin_every_days=180),
)


class SuccessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: list[TierConfig] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1, max_length=20)
    default_term_months: int = Field(
        default=12, ge=1, le=120, description="The term of a won deal that carried none (deal.won v1)"
    )
    renewal_window_days: int = Field(
        default=120,
        ge=1,
        le=730,
        description="Renewals due within this many days appear in the account manager's renewal list",
    )
    nps_every_days: int = Field(default=180, ge=7, le=730, description="NPS survey schedule per account")
    survey_link_valid_days: int = Field(default=14, ge=1, le=90, description="How long a survey link works")

    @field_validator("tiers")
    @classmethod
    def _unique_with_a_floor(cls, tiers: list[TierConfig]) -> list[TierConfig]:
        names = [t.name for t in tiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique: {', '.join(duplicates)}")
        if not any(t.min_value == 0 for t in tiers):
            raise ValueError("one tier must have min_value 0, so every account gets a tier")
        return tiers

    def tier(self, name: str) -> TierConfig | None:
        return next((t for t in self.tiers if t.name == name), None)

    def tier_for_value(self, value: Decimal) -> TierConfig:
        """The tier with the highest ``min_value`` the contract value reaches."""
        return tier_for_value(self.tiers, value)

    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]


def tier_for_value(tiers: Sequence[TierConfig], value: Decimal) -> TierConfig:
    reached = [t for t in tiers if value >= t.min_value]
    return max(reached, key=lambda t: t.min_value)


@dataclass(frozen=True)
class SuccessConfigRecord:
    """The customer success configuration as stored, with who changed it last and when."""

    config: SuccessConfig
    updated_at: datetime | None = None
    updated_by: str | None = None
