"""/imports (leads from CSV or JSON lines files), /import-mappings, and /leads/export.

The import routes are the platform's (``crm_platform.imports.api``, shared with sales' contact
imports) with marketing's job type, writers and defaults: an import is created (format,
mapping, defaults), then its file is PUT as the raw body, streamed into storage; the worker
imports it in the background (``leads.importer``: each row by ``POST /leads``' rules) while
``GET /imports/{id}`` shows its progress and ``GET /imports/{id}/errors`` its rejected rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from crm_platform.csv_stream import Cell, csv_response
from crm_platform.custom_fields import FieldSet, RecordType, export_cells, export_columns
from crm_platform.custom_fields_api import fields_of
from crm_platform.imports.api import ImportSpec, routers
from crm_platform.routes import CurrentActor, DbDep, require_roles
from fastapi import APIRouter, Query
from pydantic import BeforeValidator
from starlette.responses import StreamingResponse

from leads import store as repo
from leads.api.deps import WRITERS
from leads.api.models import ImportDefaultsIn
from leads.domain.access import rep_scope
from leads.domain.imports import ImportDefaults, ImportJob
from leads.domain.leads import LeadStatus


def _defaults(d: ImportDefaultsIn) -> ImportDefaults:
    return ImportDefaults(d.source_channel, d.marketing_email, d.campaign)


SPEC: ImportSpec[ImportJob] = ImportSpec(repo.IMPORTS, WRITERS, ImportDefaultsIn, _defaults)
router, mappings_router = routers(SPEC)
export_router = APIRouter(prefix="/leads", tags=["leads"], dependencies=[require_roles(*WRITERS)])
UPLOAD_PATH = SPEC.upload_path()


def is_upload(path: str) -> bool:
    return UPLOAD_PATH.match(path) is not None


# -- export ------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "id",
    "email",
    "name",
    "company",
    "source_channel",
    "campaign",
    "marketing_email",
    "status",
    "score",
    "touch_count",
    "handoff_count",
    "verdict",
    "created_at",
    "updated_at",
)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


@export_router.get(
    "/export",
    response_class=StreamingResponse,
    summary="Every lead the list's filters select, as CSV (streamed; newest first)",
    responses={200: {"content": {"text/csv": {}}, "description": "one row per lead"}},
)
async def export_leads(
    db: DbDep,
    actor: CurrentActor,
    fields: Annotated[FieldSet, fields_of(RecordType.LEAD)],
    status_: Annotated[LeadStatus | None, BeforeValidator(_blank_is_none), Query(alias="status")] = None,
    channel: Annotated[str | None, BeforeValidator(_blank_is_none), Query(max_length=64)] = None,
) -> StreamingResponse:
    leads = repo.export_leads(
        db,
        status=status_.value if status_ else None,
        channel=channel.strip().lower() if channel else None,
        rep=rep_scope(actor),  # a rep's export: the leads assigned to them (when granted the export)
    )

    async def rows() -> AsyncIterator[Sequence[Cell]]:
        async for x in leads:
            yield (
                x.id,
                x.email,
                x.name,
                x.company,
                x.origin_channel,
                x.campaign,
                x.consent.marketing_email,
                x.status.value,
                x.score,
                x.touch_count,
                x.handoff_count,
                x.verdict,
                x.created_at,
                x.updated_at,
                *export_cells(fields, x.custom),
            )

    # Then one custom.<key> column per custom field defined now (what an import maps back).
    return csv_response("leads.csv", EXPORT_COLUMNS + export_columns(fields), rows())
