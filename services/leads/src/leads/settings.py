"""Marketing's settings: the platform's, plus the behaviour retry window."""

from __future__ import annotations

from crm_platform.settings import ServiceSettings
from pydantic import Field

SERVICE_NAME = "leads"
DEPARTMENT = "marketing"
DEFAULT_PORT = 8001


class LeadsSettings(ServiceSettings):
    service_name: str = Field(default=SERVICE_NAME, validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=DEFAULT_PORT, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
    # A behaviour POSTed without Idempotency-Key and without external_id is taken as a
    # retry when the same caller posts the same content again within this window.
    behaviour_retry_window_seconds: int = Field(
        default=600, validation_alias="CRM_BEHAVIOUR_RETRY_WINDOW_SECONDS", ge=1, le=86400
    )

    @classmethod
    def of(cls, settings: ServiceSettings) -> LeadsSettings:
        """``settings`` as leads settings (a plain ``ServiceSettings`` gets leads' defaults)."""
        return settings if isinstance(settings, cls) else cls.model_validate(settings.model_dump())
