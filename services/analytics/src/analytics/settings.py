"""Analytics settings: the platform's, plus what the faust worker needs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from crm_contracts.topics import LEADS_EVENTS, TOPICS_BY_NAME
from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field, model_validator

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


SERVICE_NAME = "analytics"
DEPARTMENT = "analytics"
DEFAULT_PORT = 8004


# Retention (CRM_RETENTION_DAYS, issue 9): the record types analytics keeps for a period.
# ``record``: the KPIs' facts of one ticket, survey, renewal, check-in, action item or handoff
# (analytics.domain.records), dropped once none of its slots moved within the period.
RETENTION_TYPES = ("record",)


class AnalyticsSettings(ServiceSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)

    @model_validator(mode="after")
    def _known_retention_types(self) -> AnalyticsSettings:
        unknown = sorted(set(self.retention_days) - set(RETENTION_TYPES))
        if unknown:
            raise ValueError(
                f"CRM_RETENTION_DAYS names unknown record types {unknown}; known: {list(RETENTION_TYPES)}"
            )
        return self

    # The faust worker (python -m analytics.worker)
    app_id: str = Field(
        default="crm-analytics",
        validation_alias="CRM_ANALYTICS_APP_ID",
        min_length=1,
        description="faust app id: its consumer group and the prefix of its changelog topics",
    )
    worker_web_port: int | None = Field(
        default=None,
        validation_alias="CRM_ANALYTICS_WORKER_WEB_PORT",
        ge=1,
        le=65535,
        description="faust's own web server; disabled unless a port is given",
    )
    worker_datadir: Path | None = Field(
        default=None,
        validation_alias="CRM_ANALYTICS_WORKER_DATADIR",
        description="faust's data directory (default: a folder under the system temp dir)",
    )
    snapshot_interval_seconds: float = Field(
        default=1.0,
        validation_alias="CRM_ANALYTICS_SNAPSHOT_SECONDS",
        gt=0,
    )
    kpi_interval_seconds: float = Field(
        default=10.0,
        validation_alias="CRM_ANALYTICS_KPI_SECONDS",
        gt=0,
        description="compute and publish the KPIs (periods, overdue items, business latency windows) "
        "this often; they move with time, so they are computed on a timer, not per event",
    )
    confirm_batch_max: int = Field(
        default=2000,
        validation_alias="CRM_ANALYTICS_CONFIRM_BATCH",
        ge=1,
        le=100_000,
        description="events folded ahead of their changelog writes' acknowledgement (the agent "
        "then waits for the broker): one wait covers every event folded meanwhile",
    )
    fetch_interval_ms: int = Field(
        default=500,
        validation_alias="CRM_ANALYTICS_FETCH_INTERVAL_MS",
        ge=0,
        le=5000,
        description="a fetch that brought records starts the next one no sooner than this "
        "(crm_platform.kafka.pace_fetches): live events come many per fetch instead of one "
        "or two; the figures are published once a second anyway (half a second: a live handoff "
        "cost the worker about half the CPU of 100 ms, docs/performance.md twelfth session, "
        "latency); 0 turns it off",
    )
    reconcile_interval_seconds: float = Field(
        default=3600.0,
        validation_alias="CRM_ANALYTICS_RECONCILE_SECONDS",
        ge=0,
        description="replay the log and repair the facts every so often, and after each "
        "table recovery; 0 turns reconciliation off",
    )
    max_restarts: int = Field(
        default=10,
        validation_alias="CRM_ANALYTICS_MAX_RESTARTS",
        ge=1,
        description="agent restarts tolerated within the window before the worker exits 1",
    )
    restart_window_seconds: float = Field(
        default=60.0, validation_alias="CRM_ANALYTICS_RESTART_WINDOW_SECONDS", gt=0
    )
    table_partitions: int = Field(
        # Changelog partitions must equal the source topics' partitions (faust maps
        # changelog partition n to source partition n when recovering).
        default=TOPICS_BY_NAME[LEADS_EVENTS].partitions,
        validation_alias="CRM_ANALYTICS_TABLE_PARTITIONS",
        ge=1,
    )

    @property
    def faust_broker(self) -> list[str]:
        """``KAFKA_BOOTSTRAP_SERVERS`` (``host:port[,host:port]``) as faust broker URLs."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return [h if "://" in h else f"kafka://{h}" for h in hosts]

    @property
    def faust_credentials(self) -> CredentialsT | None:
        """The platform's Kafka security settings as faust's ``broker_credentials``.

        faust hands them to every client it makes (consumer, producer, admin), so the
        worker authenticates like the services: SASL (SCRAM or PLAIN) over TLS, TLS
        alone, or mTLS (a client certificate in the TLS context). None: PLAINTEXT.
        """
        from faust.auth import SASLCredentials, SSLCredentials

        security = self.kafka_security
        if security.sasl:
            return SASLCredentials(
                username=security.sasl_username,
                password=security.sasl_password,
                mechanism=security.sasl_mechanism,
                ssl_context=security.ssl_context(),  # None with SASL_PLAINTEXT
            )
        if security.tls:
            return SSLCredentials(security.ssl_context())
        return None

    @property
    def faust_datadir(self) -> Path:
        if self.worker_datadir is not None:
            return self.worker_datadir
        return Path(tempfile.gettempdir()) / "crm-analytics" / self.app_id
