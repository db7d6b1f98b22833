"""Settings shared by every service, read from the environment, failing fast.

With ``CRM_ENV=production`` the development JWT secret is refused, so a service
can never reach production signing tokens with a key printed in the README.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    service_name: str = Field(default="service", validation_alias="CRM_SERVICE_NAME")
    env: Literal["local", "test", "production"] = Field(default="local", validation_alias="CRM_ENV")
    kafka_bootstrap_servers: str = Field(validation_alias="KAFKA_BOOTSTRAP_SERVERS", min_length=1)
    mongodb_uri: str = Field(validation_alias="MONGODB_URI", min_length=1)
    mongodb_database: str | None = Field(default=None, validation_alias="MONGODB_DATABASE")
    jwt_secret: str = Field(default=DEV_JWT_SECRET, validation_alias="CRM_JWT_SECRET", min_length=32)
    jwt_issuer: str = Field(default="crm-gateway", validation_alias="CRM_JWT_ISSUER")
    http_host: str = Field(default="127.0.0.1", validation_alias="CRM_HTTP_HOST")
    http_port: int = Field(default=8000, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
    log_level: str = Field(default="INFO", validation_alias="CRM_LOG_LEVEL")
    # Kafka brokers hold an empty fetch for fetch.max.wait.ms; a broker that answers
    # at once makes an idle consumer spin. A pause after each empty fetch bounds that
    # (0 = rely on the broker, right for Apache Kafka). See kafka.pace_empty_fetches.
    consumer_idle_backoff_ms: int = Field(
        default=0, validation_alias="CRM_CONSUMER_IDLE_BACKOFF_MS", ge=0, le=1000
    )
    consumer_group: str | None = Field(default=None, validation_alias="CRM_CONSUMER_GROUP")
    outbox_poll_seconds: float = Field(default=0.5, validation_alias="CRM_OUTBOX_POLL_SECONDS", gt=0)
    consumer_enabled: bool = Field(default=True, validation_alias="CRM_CONSUMER_ENABLED")
    provision_topics: bool = Field(default=True, validation_alias="CRM_PROVISION_TOPICS")
    topic_replication_factor: int | None = Field(
        default=None, validation_alias="CRM_TOPIC_REPLICATION_FACTOR", ge=1
    )

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> ServiceSettings:
        if self.env == "production" and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError("CRM_JWT_SECRET must be set to a real secret when CRM_ENV=production")
        return self

    @property
    def group_id(self) -> str:
        return self.consumer_group or self.service_name

    @property
    def database_name(self) -> str:
        return self.mongodb_database or self.service_name.replace("-", "_")
