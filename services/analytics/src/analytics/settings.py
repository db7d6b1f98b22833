"""Analytics settings: the platform's, plus what the faust worker needs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from crm_contracts.topics import LEADS_EVENTS, TOPICS_BY_NAME
from crm_platform.settings import ServiceSettings
from pydantic import Field


class AnalyticsSettings(ServiceSettings):
    service_name: str = Field(default="analytics", validation_alias="CRM_SERVICE_NAME")
    http_port: int = Field(default=8004, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)

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
    agent_concurrency: int = Field(
        default=16,
        validation_alias="CRM_ANALYTICS_CONCURRENCY",
        ge=1,
        le=256,
        description="events in flight at once (each waits for its changelog writes)",
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
    def faust_datadir(self) -> Path:
        if self.worker_datadir is not None:
            return self.worker_datadir
        return Path(tempfile.gettempdir()) / "crm-analytics" / self.app_id
