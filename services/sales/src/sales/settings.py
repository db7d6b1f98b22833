"""Sales' settings: the platform's, with this service's name, port, lead response SLA and review policy."""

from __future__ import annotations

from decimal import Decimal

from crm_platform.imports.settings import ImportSettings
from crm_platform.settings import http_port_field, service_name_field
from pydantic import Field

from sales.domain.inbox import DEFAULT_SLA_MINUTES, MAX_SLA_MINUTES, MIN_SLA_MINUTES
from sales.domain.review import (
    DEFAULT_COMMITMENT_THRESHOLD,
    DEFAULT_VALUE_THRESHOLD,
    MAX_COMMITMENT_THRESHOLD,
    ReviewPolicy,
)

SERVICE_NAME = "sales"
DEPARTMENT = "sales"
DEFAULT_PORT = 8002


class SalesSettings(ImportSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    lead_response_sla_minutes: int = Field(
        default=DEFAULT_SLA_MINUTES,
        validation_alias="CRM_SALES_LEAD_RESPONSE_SLA_MINUTES",
        ge=MIN_SLA_MINUTES,
        le=MAX_SLA_MINUTES,
        description="The SLA stored on first start; afterwards PUT /config changes it",
    )
    # When a deal needs customer success' commitment review before it can be won: stored on
    # first start (a config without one gets it); afterwards PUT /config/commitment-review.
    review_value_threshold: Decimal | None = Field(
        default=DEFAULT_VALUE_THRESHOLD,
        validation_alias="CRM_SALES_REVIEW_VALUE_THRESHOLD",
        gt=0,
        le=Decimal("1e12"),
        description="Deals of at least this value (in their currency) need the review",
    )
    review_commitment_threshold: int | None = Field(
        default=DEFAULT_COMMITMENT_THRESHOLD,
        validation_alias="CRM_SALES_REVIEW_COMMITMENT_THRESHOLD",
        ge=1,
        le=MAX_COMMITMENT_THRESHOLD,
        description="Deals with at least this many commitments need the review",
    )

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy(self.review_value_threshold, self.review_commitment_threshold)
