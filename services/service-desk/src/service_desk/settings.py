"""The service desk's settings: the platform's, with this service's name and port as defaults."""

from __future__ import annotations

from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field, SecretStr, model_validator

SERVICE_NAME = "service-desk"
DEPARTMENT = "customer-success"
DEFAULT_PORT = 8003
# Development only: production refuses to start without its own CRM_SURVEY_LINK_SECRET.
DEV_SURVEY_SECRET = "dev-survey-link-secret-not-for-production"
DEFAULT_SURVEY_BASE_URL = "http://localhost:8080/public/service-desk/surveys"


class ServiceDeskSettings(ServiceSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    survey_link_secret: SecretStr = Field(
        default=SecretStr(DEV_SURVEY_SECRET),
        validation_alias="CRM_SURVEY_LINK_SECRET",
        description="HMAC key of the customers' survey links (the same in every replica)",
    )
    health_recompute_seconds: float = Field(
        default=3600.0,
        validation_alias="CRM_HEALTH_RECOMPUTE_SECONDS",
        ge=0,
        description="Every active account's health is scored again this often (time makes "
        "check-ins and renewals overdue); 0 turns the schedule off",
    )
    survey_base_url: str = Field(
        default=DEFAULT_SURVEY_BASE_URL,
        validation_alias="CRM_SURVEY_BASE_URL",
        description="Where customers open survey links: the gateway's /public/service-desk/surveys",
    )

    @model_validator(mode="after")
    def _production_secret(self) -> ServiceDeskSettings:
        secret = self.survey_link_secret.get_secret_value()
        if self.env == "production" and (secret == DEV_SURVEY_SECRET or len(secret) < 32):
            raise ValueError("CRM_SURVEY_LINK_SECRET must be set to a secret of at least 32 characters")
        return self


def survey_secret(settings: ServiceSettings) -> bytes:
    """The survey link key (settings of another class, e.g. in tests, get the development key)."""
    secret = getattr(settings, "survey_link_secret", None)
    return (secret.get_secret_value() if secret else DEV_SURVEY_SECRET).encode()


def health_recompute_seconds(settings: ServiceSettings) -> float:
    return float(getattr(settings, "health_recompute_seconds", 3600.0))


def survey_base_url(settings: ServiceSettings) -> str:
    return str(getattr(settings, "survey_base_url", DEFAULT_SURVEY_BASE_URL))
