"""The service desk's settings: the platform's, with this service's name and port as defaults."""

from __future__ import annotations

from crm_platform.settings import ServiceSettings
from pydantic import Field

SERVICE_NAME = "service-desk"
DEPARTMENT = "customer-success"
DEFAULT_PORT = 8003


class ServiceDeskSettings(ServiceSettings):
    service_name: str = Field(default=SERVICE_NAME, validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=DEFAULT_PORT, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
