"""The import settings of a department that imports (leads, sales): its settings class derives from
:class:`ImportSettings` instead of ``ServiceSettings``."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from crm_platform.settings import ServiceSettings


class ImportSettings(ServiceSettings):
    @classmethod
    def of_service(cls, settings: ServiceSettings) -> ImportSettings:
        """``settings``' import settings (a plain ``ServiceSettings`` gets the defaults)."""
        return settings if isinstance(settings, ImportSettings) else cls.model_validate(settings.model_dump())

    # Rows per transaction, the worker's lease on a job (a crashed worker's job is resumed by
    # another once it expires), how often idle workers look for work, and the longest row a
    # file may have (a longer one is rejected, never held).
    import_batch_rows: int = Field(default=1000, validation_alias="CRM_IMPORT_BATCH_ROWS", ge=1, le=5000)
    import_lease_seconds: float = Field(default=30.0, validation_alias="CRM_IMPORT_LEASE_SECONDS", gt=0)
    import_poll_seconds: float = Field(default=2.0, validation_alias="CRM_IMPORT_POLL_SECONDS", gt=0)
    import_max_row_bytes: int = Field(
        default=65536, validation_alias="CRM_IMPORT_MAX_ROW_BYTES", ge=1024, le=1_048_576
    )
    # Batches whose transactions may run at once (a department that stores batch records and
    # names its batches' dedupe keys: leads; crm_platform.imports.worker): with 2 the process
    # works on the next batch while the database works on the one before (docs/performance.md,
    # "Eighth session, import"); 1 runs them one by one.
    import_in_flight: int = Field(default=2, validation_alias="CRM_IMPORT_IN_FLIGHT", ge=1, le=4)
    import_worker_enabled: bool = Field(default=True, validation_alias="CRM_IMPORT_WORKER_ENABLED")
    # An import whose processing fails this many times in a row (claims without a batch
    # committed in between) is marked failed with the last error, instead of retried forever.
    import_max_attempts: int = Field(default=5, validation_alias="CRM_IMPORT_MAX_ATTEMPTS", ge=1, le=100)
    # One upload per import at a time: another PUT of its file is refused (409) until the
    # running one ends or has stored nothing for this long (a client that went away).
    import_upload_stale_seconds: float = Field(
        default=60.0, validation_alias="CRM_IMPORT_UPLOAD_STALE_SECONDS", gt=0, le=3600
    )

    def worker_options(self) -> dict[str, Any]:
        """The import worker's keyword arguments from these settings (every department's the same)."""
        return {
            "batch_rows": self.import_batch_rows,
            "lease_seconds": self.import_lease_seconds,
            "poll_seconds": self.import_poll_seconds,
            "max_row_bytes": self.import_max_row_bytes,
            "max_attempts": self.import_max_attempts,
            "in_flight": self.import_in_flight,
        }
