"""/contacts/imports and /contacts/import-mappings: contacts from CSV or JSON lines files (issue 9).

The platform's import routes (``crm_platform.imports.api``, shared with marketing's lead
imports) with sales' job type, roles and defaults: an import is created (format, mapping,
``defaults.owner``: whose book the contacts go to, by ``POST /contacts``' rule), its file PUT
as the raw body (streamed), and the worker (``sales.importer``) adds one contact per email,
merging a known one, while ``GET /contacts/imports/{id}`` shows its progress and
``GET /contacts/imports/{id}/errors`` its rejected rows.
"""

from __future__ import annotations

from typing import Any

from crm_platform.actor import Actor
from crm_platform.imports.api import ImportSpec, routers

from sales import handlers, store
from sales.api.deps import SALES
from sales.api.models import ContactImportDefaultsIn
from sales.domain.contact_imports import ContactImportDefaults, ContactImportJob


async def _owner(uow: Any, actor: Actor, given: ContactImportDefaultsIn) -> ContactImportDefaults:
    return await handlers.import_owner(uow, actor, given.owner)


def _no_resolution(given: ContactImportDefaultsIn) -> ContactImportDefaults:  # pragma: no cover
    raise AssertionError("sales resolves the owner with the actor (resolve_defaults)")


SPEC: ImportSpec[ContactImportJob] = ImportSpec(
    store.CONTACT_IMPORTS,
    SALES,
    ContactImportDefaultsIn,
    _no_resolution,
    resolve_defaults=_owner,
    prefix="/contacts/imports",
    mappings_prefix="/contacts/import-mappings",
    tag="contacts",
)
router, mappings_router = routers(SPEC)
UPLOAD_PATH = SPEC.upload_path()


def is_upload(path: str) -> bool:
    return UPLOAD_PATH.match(path) is not None
