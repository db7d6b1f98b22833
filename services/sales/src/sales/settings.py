"""Sales' settings: the platform's, with this service's name, port and lead response SLA."""

from __future__ import annotations

from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field

from sales.domain.inbox import DEFAULT_SLA_MINUTES, MAX_SLA_MINUTES, MIN_SLA_MINUTES

SERVICE_NAME = "sales"
DEPARTMENT = "sales"
DEFAULT_PORT = 8002


class SalesSettings(ServiceSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    lead_response_sla_minutes: int = Field(
        default=DEFAULT_SLA_MINUTES,
        validation_alias="CRM_SALES_LEAD_RESPONSE_SLA_MINUTES",
        ge=MIN_SLA_MINUTES,
        le=MAX_SLA_MINUTES,
        description="The SLA stored on first start; afterwards PUT /config changes it",
    )
