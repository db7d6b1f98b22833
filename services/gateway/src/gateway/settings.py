"""The gateway's settings: the platform's plus upstream URLs, accounts and login rules."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from crm_platform.keys import ensure_dev_keys, load_private_key
from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field, SecretStr, model_validator

from gateway.domain.lockout import ThrottlePolicy
from gateway.domain.passwords import PasswordPolicy, PolicyViolation
from gateway.domain.routes import ANALYTICS, CONSOLE, LEADS, SALES, SERVICE_DESK

SERVICE_NAME = "gateway"
DEFAULT_PORT = 8080
DEV_ADMIN_PASSWORD = "admin-dev-password"  # documented local/test default only


class GatewaySettings(ServiceSettings):
    owns_revocations: ClassVar[bool] = True
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    # The gateway publishes the role -> permission policy (permissions.changed) and consumes nothing.

    leads_url: str = Field(default="http://127.0.0.1:8001", validation_alias="CRM_LEADS_URL")
    sales_url: str = Field(default="http://127.0.0.1:8002", validation_alias="CRM_SALES_URL")
    service_desk_url: str = Field(default="http://127.0.0.1:8003", validation_alias="CRM_SERVICE_DESK_URL")
    analytics_url: str = Field(default="http://127.0.0.1:8004", validation_alias="CRM_ANALYTICS_URL")
    # The web console, served at / (every path the gateway does not route itself).
    console_url: str = Field(default="http://127.0.0.1:8005", validation_alias="CRM_CONSOLE_URL")
    upstream_timeout_seconds: float = Field(
        default=30.0, validation_alias="CRM_UPSTREAM_TIMEOUT_SECONDS", gt=0
    )
    upstream_connect_timeout_seconds: float = Field(
        default=3.0, validation_alias="CRM_UPSTREAM_CONNECT_TIMEOUT_SECONDS", gt=0
    )
    upstream_max_connections: int = Field(default=200, validation_alias="CRM_UPSTREAM_MAX_CONNECTIONS", ge=1)

    admin_password: SecretStr | None = Field(default=None, validation_alias="CRM_ADMIN_PASSWORD")
    # The one private key that signs tokens (gateway only); services get the public half.
    jwt_private_key_file: Path | None = Field(default=None, validation_alias="CRM_JWT_PRIVATE_KEY_FILE")
    access_token_ttl_minutes: int = Field(
        default=15, validation_alias="CRM_ACCESS_TOKEN_TTL_MINUTES", ge=1, le=60
    )
    refresh_token_ttl_minutes: int = Field(
        default=480, validation_alias="CRM_REFRESH_TOKEN_TTL_MINUTES", ge=5, le=30 * 24 * 60
    )
    revocation_refresh_seconds: float = Field(
        default=1.0,
        validation_alias="CRM_REVOCATION_REFRESH_SECONDS",
        gt=0,
        le=60,
        description="how often each gateway process reloads the revocation list from its database",
    )
    password_min_length: int = Field(default=12, validation_alias="CRM_PASSWORD_MIN_LENGTH", ge=8, le=128)
    login_base_delay_seconds: float = Field(
        default=1.0, validation_alias="CRM_LOGIN_BASE_DELAY_SECONDS", gt=0
    )
    login_max_delay_seconds: float = Field(
        default=900.0, validation_alias="CRM_LOGIN_MAX_DELAY_SECONDS", gt=0
    )
    login_account_max_delay_seconds: float = Field(
        default=60.0, validation_alias="CRM_LOGIN_ACCOUNT_MAX_DELAY_SECONDS", gt=0
    )
    login_client_free_attempts: int = Field(
        default=30, validation_alias="CRM_LOGIN_CLIENT_FREE_ATTEMPTS", ge=1
    )
    login_pair_free_attempts: int = Field(default=5, validation_alias="CRM_LOGIN_PAIR_FREE_ATTEMPTS", ge=1)
    login_account_free_attempts: int = Field(
        default=10, validation_alias="CRM_LOGIN_ACCOUNT_FREE_ATTEMPTS", ge=1
    )
    login_forget_minutes: float = Field(default=15.0, validation_alias="CRM_LOGIN_FORGET_MINUTES", gt=0)
    login_max_concurrent: int = Field(default=16, validation_alias="CRM_LOGIN_MAX_CONCURRENT", ge=1)
    trusted_proxy_hops: int = Field(
        default=0,
        validation_alias="CRM_TRUSTED_PROXY_HOPS",
        ge=0,
        le=5,
        description="proxies in front of the gateway whose X-Forwarded-For entries are trusted",
    )

    @model_validator(mode="after")
    def _signing_key(self) -> GatewaySettings:
        if self.jwt_private_key_file is None:
            if self.env == "production":
                raise ValueError(
                    "CRM_JWT_PRIVATE_KEY_FILE must name the token signing key (Ed25519 PEM) "
                    "when CRM_ENV=production"
                )
            self.jwt_private_key_file = ensure_dev_keys().private
        load_private_key(self.jwt_private_key_file)  # unreadable or not Ed25519: refuse to start
        return self

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

    def throttles(self) -> dict[str, ThrottlePolicy]:
        """Login throttles by key kind, in the order they are checked (see domain.lockout)."""
        base = timedelta(seconds=self.login_base_delay_seconds)
        forget = timedelta(minutes=self.login_forget_minutes)
        long_cap = timedelta(seconds=self.login_max_delay_seconds)
        return {
            "client": ThrottlePolicy(self.login_client_free_attempts, base, long_cap, forget),
            "pair": ThrottlePolicy(self.login_pair_free_attempts, base, long_cap, forget),
            "account": ThrottlePolicy(
                self.login_account_free_attempts,
                base,
                timedelta(seconds=self.login_account_max_delay_seconds),
                forget,
            ),
        }

    @property
    def upstreams(self) -> dict[str, str]:
        return {
            LEADS: self.leads_url.rstrip("/"),
            SALES: self.sales_url.rstrip("/"),
            SERVICE_DESK: self.service_desk_url.rstrip("/"),
            ANALYTICS: self.analytics_url.rstrip("/"),
            CONSOLE: self.console_url.rstrip("/"),
        }
