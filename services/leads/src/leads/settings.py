"""Marketing's settings: the platform's, plus the behaviour retry window and the import worker's."""

from __future__ import annotations

from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field

SERVICE_NAME = "leads"
DEPARTMENT = "marketing"
DEFAULT_PORT = 8001


class LeadsSettings(ServiceSettings):
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    # A behaviour POSTed without Idempotency-Key and without external_id is taken as a
    # retry when the same caller posts the same content again within this window.
    behaviour_retry_window_seconds: int = Field(
        default=600, validation_alias="CRM_BEHAVIOUR_RETRY_WINDOW_SECONDS", ge=1, le=86400
    )
    # Imports (leads.importer): rows per transaction, the worker's lease on a job (a crashed
    # worker's job is resumed by another once it expires), how often idle workers look for
    # work, and the longest row a file may have (a longer one is rejected, never held).
    import_batch_rows: int = Field(default=1000, validation_alias="CRM_IMPORT_BATCH_ROWS", ge=1, le=5000)
    import_lease_seconds: float = Field(default=30.0, validation_alias="CRM_IMPORT_LEASE_SECONDS", gt=0)
    import_poll_seconds: float = Field(default=2.0, validation_alias="CRM_IMPORT_POLL_SECONDS", gt=0)
    import_max_row_bytes: int = Field(
        default=65536, validation_alias="CRM_IMPORT_MAX_ROW_BYTES", ge=1024, le=1_048_576
    )
    import_worker_enabled: bool = Field(default=True, validation_alias="CRM_IMPORT_WORKER_ENABLED")
    # An import whose processing fails this many times in a row (claims without a batch
    # committed in between) is marked failed with the last error, instead of retried forever.
    import_max_attempts: int = Field(default=5, validation_alias="CRM_IMPORT_MAX_ATTEMPTS", ge=1, le=100)
    # One upload per import at a time: another PUT of its file is refused (409) until the
    # running one ends or has stored nothing for this long (a client that went away).
    import_upload_stale_seconds: float = Field(
        default=60.0, validation_alias="CRM_IMPORT_UPLOAD_STALE_SECONDS", gt=0, le=3600
    )

    @classmethod
    def of(cls, settings: ServiceSettings) -> LeadsSettings:
        """``settings`` as leads settings (a plain ``ServiceSettings`` gets leads' defaults)."""
        return settings if isinstance(settings, cls) else cls.model_validate(settings.model_dump())
