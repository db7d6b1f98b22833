"""Marketing's settings: the platform's and the import worker's (``crm_platform.imports.settings``),
plus the behaviour retry window."""

from __future__ import annotations

from crm_platform.imports.settings import ImportSettings
from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field

SERVICE_NAME = "leads"
DEPARTMENT = "marketing"
DEFAULT_PORT = 8001


class LeadsSettings(ImportSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    # A behaviour POSTed without Idempotency-Key and without external_id is taken as a
    # retry when the same caller posts the same content again within this window.
    behaviour_retry_window_seconds: int = Field(
        default=600, validation_alias="CRM_BEHAVIOUR_RETRY_WINDOW_SECONDS", ge=1, le=86400
    )

    # Bulk captures (POST /leads/bulk) whose transactions run at once in this process; more wait
    # for a turn. A 500-lead batch holds about 5 MB of Python objects until it commits; four at
    # once made leads' peak RSS (docs/performance.md, tenth session, rss).
    bulk_in_flight: int = Field(default=2, validation_alias="CRM_LEADS_BULK_IN_FLIGHT", ge=1, le=64)

    @classmethod
    def of(cls, settings: ServiceSettings) -> LeadsSettings:
        """``settings`` as leads settings (a plain ``ServiceSettings`` gets leads' defaults)."""
        return settings if isinstance(settings, cls) else cls.model_validate(settings.model_dump())
