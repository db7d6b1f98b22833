"""The gateway's settings: the platform's plus upstream URLs, accounts and login rules."""

from __future__ import annotations

from typing import ClassVar

from crm_platform.settings import ServiceSettings
from pydantic import Field, SecretStr, model_validator

from gateway.domain.passwords import PasswordPolicy, PolicyViolation
from gateway.domain.routes import ANALYTICS, LEADS, SALES, SERVICE_DESK

DEV_ADMIN_PASSWORD = "admin-dev-password"  # documented local/test default only


class GatewaySettings(ServiceSettings):
    service_name: str = Field(default="gateway", validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=8080, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
    # The gateway publishes and consumes no events; Kafka is not needed.
    uses_kafka: ClassVar[bool] = False
    kafka_bootstrap_servers: str = Field(default="unused", validation_alias="KAFKA_BOOTSTRAP_SERVERS")

    leads_url: str = Field(default="http://127.0.0.1:8001", validation_alias="CRM_LEADS_URL")
    sales_url: str = Field(default="http://127.0.0.1:8002", validation_alias="CRM_SALES_URL")
    service_desk_url: str = Field(default="http://127.0.0.1:8003", validation_alias="CRM_SERVICE_DESK_URL")
    analytics_url: str = Field(default="http://127.0.0.1:8004", validation_alias="CRM_ANALYTICS_URL")
    upstream_timeout_seconds: float = Field(
        default=30.0, validation_alias="CRM_UPSTREAM_TIMEOUT_SECONDS", gt=0
    )
    upstream_connect_timeout_seconds: float = Field(
        default=3.0, validation_alias="CRM_UPSTREAM_CONNECT_TIMEOUT_SECONDS", gt=0
    )
    upstream_max_connections: int = Field(default=200, validation_alias="CRM_UPSTREAM_MAX_CONNECTIONS", ge=1)

    admin_password: SecretStr | None = Field(default=None, validation_alias="CRM_ADMIN_PASSWORD")
    token_ttl_minutes: int = Field(
        default=480, validation_alias="CRM_TOKEN_TTL_MINUTES", ge=1, le=7 * 24 * 60
    )
    password_min_length: int = Field(default=12, validation_alias="CRM_PASSWORD_MIN_LENGTH", ge=8, le=128)
    login_max_failures: int = Field(default=5, validation_alias="CRM_LOGIN_MAX_FAILURES", ge=1)
    login_window_minutes: float = Field(default=15.0, validation_alias="CRM_LOGIN_WINDOW_MINUTES", gt=0)
    login_lockout_minutes: float = Field(default=15.0, validation_alias="CRM_LOGIN_LOCKOUT_MINUTES", gt=0)
    session_check_seconds: float = Field(
        default=2.0,
        validation_alias="CRM_SESSION_CHECK_SECONDS",
        ge=0,
        description="how long a user's active/revoked state is cached per gateway process",
    )

    @model_validator(mode="after")
    def _admin_password_rules(self) -> GatewaySettings:
        if self.env == "production":
            if self.admin_password is None or not self.admin_password.get_secret_value():
                raise ValueError(
                    "CRM_ADMIN_PASSWORD must be set when CRM_ENV=production: it is the password of "
                    "the bootstrap 'admin' account created when the user database is empty"
                )
            if self.admin_password.get_secret_value() == DEV_ADMIN_PASSWORD:
                raise ValueError(
                    "CRM_ADMIN_PASSWORD must not be the documented development password "
                    "when CRM_ENV=production"
                )
        if self.admin_password is not None:
            try:
                self.password_policy.check(self.admin_password.get_secret_value(), username="admin")
            except PolicyViolation as exc:
                raise ValueError(f"CRM_ADMIN_PASSWORD: {exc.message}") from None
        return self

    @property
    def password_policy(self) -> PasswordPolicy:
        return PasswordPolicy(min_length=self.password_min_length)

    @property
    def bootstrap_admin_password(self) -> str:
        if self.admin_password is not None:
            return self.admin_password.get_secret_value()
        return DEV_ADMIN_PASSWORD  # production never gets here: the validator refused it

    @property
    def upstreams(self) -> dict[str, str]:
        return {
            LEADS: self.leads_url.rstrip("/"),
            SALES: self.sales_url.rstrip("/"),
            SERVICE_DESK: self.service_desk_url.rstrip("/"),
            ANALYTICS: self.analytics_url.rstrip("/"),
        }
