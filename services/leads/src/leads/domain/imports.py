"""Importing leads from a file: marketing's fields and defaults over the shared machinery.

The job, its checkpoint, the column mapping and the incremental record reader are the
platform's (``crm_platform.imports.domain``, shared with sales' contact imports); what is
marketing's is which lead fields a column may map to, the values for fields a row does not
give, and (in ``leads.importer``) turning a record into a capture by ``POST /leads``' rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crm_platform.imports.domain import (
    MAX_COLUMNS,
    RAW_KEPT,
    Checkpoint,
    Counts,
    ImportFormat,
    ImportState,
    InvalidMapping,
    NotAcceptingFile,
    RawRecord,
    RecordReader,
    Rejection,
    StaleCheckpoint,
    columns_missing,
    parse_csv,
    parse_header,
    parse_jsonl,
)
from crm_platform.imports.domain import ImportJob as _ImportJob

__all__ = [
    "LEAD_FIELDS",
    "MAX_COLUMNS",
    "RAW_KEPT",
    "REQUIRED_FIELDS",
    "Checkpoint",
    "Counts",
    "ImportDefaults",
    "ImportFormat",
    "ImportJob",
    "ImportState",
    "InvalidMapping",
    "NotAcceptingFile",
    "RawRecord",
    "RecordReader",
    "Rejection",
    "StaleCheckpoint",
    "check_mapping",
    "columns_missing",
    "default_mapping",
    "parse_csv",
    "parse_header",
    "parse_jsonl",
]

# The lead fields a file column may be mapped to (the capture's fields).
LEAD_FIELDS = ("email", "name", "company", "source_channel", "campaign", "marketing_email")
REQUIRED_FIELDS = ("email", "name")


@dataclass(frozen=True)
class ImportDefaults:
    """Values for the fields a row does not give (no column, or an empty cell)."""

    source_channel: str = "import"
    marketing_email: bool = False
    campaign: str | None = None


@dataclass(frozen=True)
class ImportJob(_ImportJob[ImportDefaults]):
    """An import of leads."""

    FIELDS = LEAD_FIELDS
    REQUIRED = REQUIRED_FIELDS
    RECORD = "lead"
    CUSTOM_FIELDS = True  # a column may map to custom.<key> (crm_platform.custom_fields)


def check_mapping(columns: Mapping[str, str]) -> dict[str, str]:
    """A column mapping (file column -> lead field) as stored, or :class:`InvalidMapping`."""
    return ImportJob.checked_mapping(columns)


def default_mapping(header: Sequence[str]) -> dict[str, str]:
    """Without a mapping: each column named like a lead field (any case, trimmed) maps to it."""
    return ImportJob.mapping_for(header)
