"""Custom field definitions (issue 9): stored in each department's own database, cached, edited
by admins at ``/custom-fields``; the ``custom`` object of record requests and responses.

Each department owns the definitions of its own record types (``crm_platform.custom_fields``
for the rules), in its collection ``custom_fields``: one document per record type,
``{_id: <record type>, version, fields: [...], changed_at, changed_by}``. A change is one
audited transaction (the audit log keeps each version's before and after). Definitions are
read on every create and edit, so :class:`CustomFieldRegistry` keeps them
``CRM_CONFIG_CACHE_SECONDS`` like other rarely-changing configuration
(:class:`crm_platform.cache.TtlCache`): the replica that changes them uses the change at once,
the others within that time.

Wiring, in ``bootstrap.build_app``: :func:`wire` (the registry on ``app.state``) and
:func:`router` among the protected routers; ``await ensure_index(db, <collection>)`` in the
service's ``ensure_indexes`` for each collection holding records with custom fields (one
wildcard index ``custom.$**``: every key a filter may name, without an index per field an
admin adds). Routes: ``GET /custom-fields`` and ``GET /custom-fields/{record_type}`` for the
department's roles (forms need the definitions), ``PUT /custom-fields/{record_type}`` for
admins; each is a permission in ``crm_platform.permissions``
(``<service>.custom-fields.read`` / ``.write``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from crm_contracts.extensions import KEY_PATTERN, MAX_FIELDS
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter
from pymongo.asynchronous.database import AsyncDatabase

from crm_platform.auth import Role, require_roles
from crm_platform.cache import TtlCache
from crm_platform.clock import now_millis
from crm_platform.custom_fields import (
    FieldDefinition,
    FieldSet,
    FieldSetIn,
    FieldType,
    RecordType,
    StoredValue,
)
from crm_platform.errors import NotFound
from crm_platform.mongo import Store, Tx
from crm_platform.routes import CurrentActor

COLLECTION = "custom_fields"
INDEX_NAME = "custom_fields"
_DEFINITIONS = TypeAdapter(list[FieldDefinition])

Doc = dict[str, Any]


def fieldset_to_doc(fields: FieldSet) -> Doc:
    return {
        "_id": fields.record_type.value,
        "version": fields.version,
        "fields": [f.model_dump(mode="json", exclude_defaults=True) for f in fields.fields],
        "changed_at": fields.changed_at,
        "changed_by": fields.changed_by,
    }


def fieldset_from_doc(record_type: RecordType, doc: Doc | None) -> FieldSet:
    if not doc:
        return FieldSet(record_type)
    return FieldSet(
        record_type,
        int(doc.get("version", 0)),
        tuple(_DEFINITIONS.validate_python(doc.get("fields", []))),
        doc.get("changed_at"),
        doc.get("changed_by"),
    )


class CustomFieldRegistry:
    """The department's record types' definitions: read through a cache, replaced by admins."""

    def __init__(self, store: Store, record_types: Sequence[RecordType], cache_seconds: float) -> None:
        self.store = store
        self.record_types = tuple(record_types)
        self.cache: TtlCache[RecordType, FieldSet] = TtlCache(cache_seconds)

    def owns(self, record_type: RecordType) -> bool:
        return record_type in self.record_types

    async def current(self, record_type: RecordType) -> FieldSet:
        async def load() -> FieldSet:
            return fieldset_from_doc(
                record_type, await self.store.db[COLLECTION].find_one({"_id": record_type.value})
            )

        return await self.cache.get(record_type, load)

    async def non_text_keys(self) -> frozenset[str]:
        """The keys defined, in every record type of the department, only as non-text fields
        (``crm_platform.field_rules``: a text value may be personal data)."""
        sets = [await self.current(t) for t in self.record_types]
        text = {f.key for s in sets for f in s.fields if f.type == FieldType.TEXT}
        return frozenset(f.key for s in sets for f in s.fields) - text

    async def replace(self, record_type: RecordType, fields: Sequence[FieldDefinition], by: str) -> FieldSet:
        """The next version of ``record_type``'s definitions, in one audited transaction."""

        async def work(tx: Tx) -> FieldSet:
            doc = await tx.db[COLLECTION].find_one({"_id": record_type.value}, session=tx.session)
            before = fieldset_from_doc(record_type, doc)
            after = FieldSet(record_type, before.version + 1, tuple(fields), now_millis(), by)
            await tx.db[COLLECTION].replace_one(
                {"_id": record_type.value}, fieldset_to_doc(after), upsert=True, session=tx.session
            )
            tx.after_commit.append(self.cache.invalidate)
            return after

        self.cache.invalidate()
        return await self.store.transaction(work)


def wire(
    app: FastAPI, store: Store, record_types: Sequence[RecordType], cache_seconds: float
) -> CustomFieldRegistry:
    registry = CustomFieldRegistry(store, record_types, cache_seconds)
    app.state.custom_fields = registry
    return registry


async def ensure_index(db: AsyncDatabase[Doc], collection: str) -> None:
    """The wildcard index every ``?cf=`` list filter on ``collection`` uses."""
    await db[collection].create_index([("custom.$**", 1)], name=INDEX_NAME)


async def get_registry(request: Request) -> CustomFieldRegistry:
    registry: CustomFieldRegistry = request.app.state.custom_fields
    return registry


RegistryDep = Annotated[CustomFieldRegistry, Depends(get_registry)]


def fields_of(record_type: RecordType) -> Any:
    """A route dependency: ``record_type``'s current definitions (``Annotated[FieldSet, fields_of(...)]``)."""

    async def load(request: Request) -> FieldSet:
        registry: CustomFieldRegistry = request.app.state.custom_fields
        return await registry.current(record_type)

    return Depends(load)


# -- the ``custom`` object of record requests and responses ------------------------------


CustomIn = Annotated[
    dict[Annotated[str, StringConstraints(max_length=40)], Any] | None,
    Field(
        default=None,
        max_length=MAX_FIELDS,
        description=(
            "Custom field values by key, as the admin defined them (GET /custom-fields/{record_type}): "
            "text and choice as strings, number as a number, date as YYYY-MM-DD, money as "
            '{"amount": "123.45", "currency": "EUR"}. On an edit, null clears a field. '
            "A value that does not fit is a 422 naming body.custom.<key> and why."
        ),
    ),
]


class MoneyOut(BaseModel):
    amount: str = Field(description="exact decimal amount")
    currency: str


CustomValueOut = int | float | str | MoneyOut
CustomOut = Annotated[
    dict[Annotated[str, StringConstraints(pattern=KEY_PATTERN)], CustomValueOut],
    Field(description="The record's custom field values by key (crm_platform.custom_fields)"),
]


def custom_out(values: dict[str, StoredValue] | Any) -> dict[str, CustomValueOut]:
    out: dict[str, CustomValueOut] = {}
    for key, value in dict(values or {}).items():
        if isinstance(value, dict):
            amount = value.get("amount")
            out[key] = MoneyOut(
                amount=str(amount if isinstance(amount, Decimal) else Decimal(str(amount))),
                currency=str(value.get("currency")),
            )
        else:
            out[key] = value
    return out


CustomFilter = Annotated[
    list[Annotated[str, StringConstraints(max_length=300)]] | None,
    Query(
        max_length=10,
        description=(
            "Custom field filters, all must hold: key=value (any type), key>=value and key<=value "
            "(number, date, money amount). Served by the wildcard index custom.$**."
        ),
    ),
]


# -- admin routes -------------------------------------------------------------------------


class FieldSetOut(BaseModel):
    record_type: RecordType
    version: int = Field(description="0 until an admin defines the first fields")
    fields: list[FieldDefinition]
    changed_at: datetime | None
    changed_by: str | None

    @classmethod
    def of(cls, s: FieldSet) -> FieldSetOut:
        return cls(
            record_type=s.record_type,
            version=s.version,
            fields=list(s.fields),
            changed_at=s.changed_at,
            changed_by=s.changed_by,
        )


class FieldSetsOut(BaseModel):
    items: list[FieldSetOut]


def _owned(registry: CustomFieldRegistry, record_type: RecordType) -> RecordType:
    if not registry.owns(record_type):
        owned = ", ".join(t.value for t in registry.record_types)
        raise NotFound(f"this department keeps no {record_type.value} records (it keeps: {owned})")
    return record_type


TypePath = Annotated[RecordType, Path(description="lead, opportunity, account or ticket")]


def router(readers: Sequence[str]) -> APIRouter:
    """``/custom-fields``: the department's roles read the definitions, admins replace them."""
    r = APIRouter(prefix="/custom-fields", tags=["custom fields"], dependencies=[require_roles(*readers)])

    @r.get(
        "", response_model=FieldSetsOut, summary="The custom fields of every record type of this department"
    )
    async def list_fieldsets(registry: RegistryDep) -> FieldSetsOut:
        return FieldSetsOut(items=[FieldSetOut.of(await registry.current(t)) for t in registry.record_types])

    @r.get("/{record_type}", response_model=FieldSetOut, summary="A record type's current custom fields")
    async def get_fieldset(record_type: TypePath, registry: RegistryDep) -> FieldSetOut:
        return FieldSetOut.of(await registry.current(_owned(registry, record_type)))

    @r.put(
        "/{record_type}",
        response_model=FieldSetOut,
        dependencies=[require_roles(Role.ADMIN)],
        summary="Replace a record type's custom fields (admins; a new version, audited)",
    )
    async def put_fieldset(
        record_type: TypePath, body: FieldSetIn, registry: RegistryDep, actor: CurrentActor
    ) -> FieldSetOut:
        changed = await registry.replace(_owned(registry, record_type), body.fields, actor.username)
        return FieldSetOut.of(changed)

    return r
