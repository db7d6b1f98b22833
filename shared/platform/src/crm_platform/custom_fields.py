"""Custom fields (issue 9): admin-defined fields per record type, validated on create and edit.

Pure: no I/O (the definitions' storage, cache and admin routes are
:mod:`crm_platform.custom_fields_api`). Every department uses these same pieces for the
record types it owns: marketing ``lead``; sales ``opportunity`` and ``account``; the
service desk ``ticket``.

- :class:`FieldDefinition`: the key, label, :class:`~crm_contracts.extensions.FieldType`
  (text, number, date, choice, money), whether it is required and its validation (length
  and pattern for text; bounds for number and money; choices; a date range; the currency
  of money). It is the very body an admin PUTs: a bad one is a 422 naming the field.
- :class:`FieldSet`: one record type's current definitions (versioned). ``create`` and
  ``edit`` check a request's ``custom`` object against it and give the values to store;
  a value that does not fit is a 422 naming ``body.custom.<key>`` and why.
- Stored values: text, choice and date (``YYYY-MM-DD``) as strings, numbers as numbers,
  money as ``{"amount": Decimal, "currency": "EUR"}`` (Decimal128 in MongoDB, exact).
- :func:`to_extensions`: the values as the events' extension map (text left out: it may
  hold personal data).
- :func:`filter_of`: ``key=value``, ``key>=value``, ``key<=value`` list filters as a MongoDB
  query on ``custom.<key>`` (served by the record collection's wildcard index
  ``custom.$**``, :func:`crm_platform.custom_fields_api.ensure_index`).

Edits: a key given with a value sets it, a key given as ``null`` clears it (refused when the
field is required); keys not given keep their value. A field made required after records
were created is required on create, and cannot be cleared on edit; older records without it
stay valid until someone sets it. Values of a field whose definition was removed stay on
the record (shown, kept on edit) but are no longer validated, filtered on or sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any

from crm_contracts.extensions import KEY_PATTERN, MAX_FIELDS, ExtensionField, ExtensionMoney, FieldType
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crm_platform import field_rules
from crm_platform.errors import RuleViolation

__all__ = [
    "CUSTOM_PREFIX",
    "FieldDefinition",
    "FieldSet",
    "FieldType",
    "RecordType",
    "StoredValue",
    "filter_of",
    "to_extensions",
]


class RecordType(StrEnum):
    LEAD = "lead"
    OPPORTUNITY = "opportunity"
    ACCOUNT = "account"
    TICKET = "ticket"


StoredValue = str | int | float | dict[str, Any]
"""A stored custom value: text/choice/date string, number, or money ``{amount, currency}``."""

CUSTOM_PREFIX = "custom."  # an import column mapped to ``custom.<key>``; an export's column
MAX_TEXT = 1000
MAX_CHOICES = 100
MAX_MONEY = Decimal("1e15")


class FieldDefinition(BaseModel):
    """One custom field of one record type, as an admin defines it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)] = Field(
        description="Its name in the record's `custom` object and in events: a-z, 0-9, _ (max 40)"
    )
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    type: FieldType
    required: bool = Field(default=False, description="Must be given when a record is created")
    description: str | None = Field(default=None, max_length=500)
    max_length: int | None = Field(default=None, ge=1, le=MAX_TEXT, description="text: at most this long")
    pattern: str | None = Field(
        default=None, max_length=200, description="text: a regular expression to match"
    )
    minimum: float | None = Field(default=None, allow_inf_nan=False, description="number, money: lowest")
    maximum: float | None = Field(default=None, allow_inf_nan=False, description="number, money: highest")
    integer: bool = Field(default=False, description="number: whole numbers only")
    choices: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=MAX_CHOICES, description="choice: the allowed values"
    )
    earliest: date | None = Field(default=None, description="date: not before")
    latest: date | None = Field(default=None, description="date: not after")
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = Field(
        default=None, description="money: the only currency accepted (any ISO 4217 code when absent)"
    )

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> FieldDefinition:
        allowed = _OPTIONS[self.type]
        for option in _ALL_OPTIONS - allowed:
            if getattr(self, option) not in (None, False, []):
                raise ValueError(f"{option} does not apply to a {self.type.value} field")
        if self.type == FieldType.CHOICE and not self.choices:
            raise ValueError("a choice field needs its choices")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("choices must be distinct")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a regular expression: {exc}") from None
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is above maximum")
        if self.earliest is not None and self.latest is not None and self.earliest > self.latest:
            raise ValueError("earliest is after latest")
        return self


_ALL_OPTIONS = frozenset(
    {"max_length", "pattern", "minimum", "maximum", "integer", "choices", "earliest", "latest", "currency"}
)
_OPTIONS: dict[FieldType, frozenset[str]] = {
    FieldType.TEXT: frozenset({"max_length", "pattern"}),
    FieldType.NUMBER: frozenset({"minimum", "maximum", "integer"}),
    FieldType.DATE: frozenset({"earliest", "latest"}),
    FieldType.CHOICE: frozenset({"choices"}),
    FieldType.MONEY: frozenset({"minimum", "maximum", "currency"}),
}


class FieldSetIn(BaseModel):
    """The body of ``PUT /custom-fields/{record_type}``: the record type's whole list of fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[FieldDefinition] = Field(max_length=MAX_FIELDS)

    @model_validator(mode="after")
    def _distinct_keys(self) -> FieldSetIn:
        keys = [f.key for f in self.fields]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"each key once: {', '.join(repeated)} given more than once")
        return self


@dataclass(frozen=True)
class FieldSet:
    """A record type's custom field definitions, version ``version`` (0: none defined yet)."""

    record_type: RecordType
    version: int = 0
    fields: tuple[FieldDefinition, ...] = ()
    changed_at: datetime | None = None
    changed_by: str | None = None

    @cached_property
    def _by_key(self) -> dict[str, FieldDefinition]:
        return {f.key: f for f in self.fields}

    @cached_property
    def has_required(self) -> bool:
        """Some field is required: every new record must give it (an import row included)."""
        return any(f.required for f in self.fields)

    def field(self, key: str) -> FieldDefinition | None:
        return self._by_key.get(key)  # per value of every row of an import: a dict, not a scan

    def create(self, given: Mapping[str, Any] | None) -> dict[str, StoredValue]:
        """The values to store on a new record: every given key checked, required ones present."""
        given = given or {}
        missing = [f.key for f in self.fields if f.required and given.get(f.key) is None]
        if missing:
            raise _refuse(missing[0], f"is required for a {self.record_type.value}")
        return self.edit({}, {k: v for k, v in given.items() if v is not None})

    def edit(
        self, current: Mapping[str, StoredValue], given: Mapping[str, Any] | None
    ) -> dict[str, StoredValue]:
        """``current`` with ``given`` applied: a value sets its key, ``None`` clears it."""
        out = dict(current)
        for key, value in (given or {}).items():
            definition = self.field(key)
            if definition is None:
                known = ", ".join(f.key for f in self.fields) or "none defined"
                raise _refuse(key, f"is not a custom field of {self.record_type.value} (known: {known})")
            if value is None:
                if definition.required:
                    raise _refuse(key, "is required and cannot be cleared")
                out.pop(key, None)
            else:
                out[key] = _checked(definition, value)
        return out

    def from_cells(self, cells: Mapping[str, object]) -> dict[str, Any]:
        """An import row's custom cells (by key) in the API's form, for :meth:`create`.

        A file's cells are text: a number field's cell is parsed as a number, a money field's
        as ``"123.45"`` or ``"123.45 EUR"``; other types, and values a JSON line already typed,
        pass as they are. A cell that cannot be read as its type is a 422 naming the field."""
        out: dict[str, Any] = {}
        for key, value in cells.items():
            d = self.field(key)
            out[key] = _from_cell(d, value) if d is not None and isinstance(value, str) else value
        return out


def row_reason(exc: RuleViolation) -> str:
    """A custom field's refusal as an import row's reason: ``custom.<key>: why``."""
    return str(exc).removeprefix("invalid input: body.")


def export_columns(fields: FieldSet) -> tuple[str, ...]:
    """An export's custom columns: ``custom.<key>`` per defined field (what an import maps back)."""
    return tuple(CUSTOM_PREFIX + f.key for f in fields.fields)


def export_cells(fields: FieldSet, values: Mapping[str, StoredValue]) -> tuple[str | int | float | None, ...]:
    """A record's cells under :func:`export_columns`: money as ``"123.45 EUR"`` (what an import
    reads back), the rest as stored, empty when unset."""
    return tuple(_cell(values.get(f.key)) for f in fields.fields)


def _cell(value: StoredValue | None) -> str | int | float | None:
    if isinstance(value, dict):
        return f"{value.get('amount')} {value.get('currency')}"
    return value


def _from_cell(d: FieldDefinition, text: str) -> Any:
    if d.type == FieldType.NUMBER:
        try:
            return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise _refuse(d.key, f"{text[:50]!r} is not a number") from None
    if d.type == FieldType.MONEY:
        amount, _, currency = text.strip().partition(" ")
        return {"amount": amount, **({"currency": currency.strip()} if currency.strip() else {})}
    return text


def _refuse(key: str, why: str) -> RuleViolation:
    return RuleViolation(f"invalid input: body.custom.{key}: {why}", field=f"body.custom.{key}")


def _checked(d: FieldDefinition, value: Any) -> StoredValue:  # noqa: C901 - one branch per type
    """The stored form of ``value`` for ``d``; a 422 naming the field and why when unfit."""
    if d.type in (FieldType.TEXT, FieldType.CHOICE):
        if not isinstance(value, str) or not value.strip():
            raise _refuse(d.key, "must be a non-empty string")
        text = value.strip()
        if d.type == FieldType.CHOICE:
            if text not in d.choices:
                raise _refuse(d.key, f"must be one of {', '.join(d.choices)}")
            return text
        if len(text) > (d.max_length or MAX_TEXT):
            raise _refuse(d.key, f"must be at most {d.max_length or MAX_TEXT} characters")
        if d.pattern is not None and not re.fullmatch(d.pattern, text):
            raise _refuse(d.key, f"must match {d.pattern}")
        return text
    if d.type == FieldType.DATE:
        day = _date(d.key, value)
        if (d.earliest and day < d.earliest) or (d.latest and day > d.latest):
            raise _refuse(d.key, f"must be between {d.earliest or 'any'} and {d.latest or 'any'}")
        return day.isoformat()
    if d.type == FieldType.NUMBER:
        number = _number(d.key, value)
        if d.integer and number != int(number):
            raise _refuse(d.key, "must be a whole number")
        _in_bounds(d, float(number))
        return int(number) if d.integer else number
    return _money(d, value)


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(key: str, value: Any) -> date:
    if isinstance(value, str) and _DAY.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse(key, "must be a date YYYY-MM-DD")


def _number(key: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(key, "must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(key, "must be a finite number")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise _refuse(key, "must fit in 64 bits")
    return value


def _in_bounds(d: FieldDefinition, number: float) -> None:
    if d.minimum is not None and number < d.minimum:
        raise _refuse(d.key, f"must be at least {d.minimum:g}")
    if d.maximum is not None and number > d.maximum:
        raise _refuse(d.key, f"must be at most {d.maximum:g}")


def _money(d: FieldDefinition, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) - {"amount", "currency"} or "amount" not in value:
        raise _refuse(d.key, 'must be {"amount": "123.45", "currency": "EUR"}')
    raw, currency = value["amount"], value.get("currency") or d.currency
    try:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise InvalidOperation
        amount = Decimal(str(raw))
        if not amount.is_finite() or abs(amount) >= MAX_MONEY or amount != amount.quantize(Decimal("0.0001")):
            raise InvalidOperation
    except InvalidOperation:
        raise _refuse(d.key, "amount must be a decimal number below 10^15 with at most 4 decimals") from None
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise _refuse(d.key, "currency must be an ISO 4217 code such as EUR")
    if d.currency is not None and currency != d.currency:
        raise _refuse(d.key, f"currency must be {d.currency}")
    _in_bounds(d, float(amount))
    return {"amount": amount, "currency": currency}


def plain(values: Mapping[str, StoredValue]) -> dict[str, Any]:
    """The values as JSON (API responses): money amounts as decimal strings."""
    return {k: _plain(v) for k, v in values.items()}


def _plain(value: StoredValue) -> Any:
    if isinstance(value, dict):
        return {"amount": str(value.get("amount")), "currency": value.get("currency")}
    return value


def to_extensions(fields: FieldSet, values: Mapping[str, StoredValue]) -> dict[str, ExtensionField]:
    """The extension map for an event: defined, non-text fields only (text may be personal data)."""
    out: dict[str, ExtensionField] = {}
    for key, value in values.items():
        d = fields.field(key)
        if d is None or d.type == FieldType.TEXT:
            continue
        if d.type == FieldType.MONEY and isinstance(value, dict):
            money = ExtensionMoney(amount=str(value["amount"]), currency=str(value["currency"]))
            out[key] = ExtensionField(type=d.type, value=money)
        elif not isinstance(value, dict):
            out[key] = ExtensionField(type=d.type, value=value)
    return out


_FILTER = re.compile(r"^([a-z][a-z0-9_]{0,39})(>=|<=|=)(.*)$", re.DOTALL)


def filter_of(
    fields: FieldSet, filters: list[str] | None, param: str = "query.cf", *, roles: Iterable[str] = ()
) -> dict[str, Any]:
    """The MongoDB query for ``?cf=key=value`` / ``key>=value`` / ``key<=value`` (all must hold).

    ``roles``: the user's; a pseudonymised user (analyst, executive) filtering on a ``text``
    field is refused (403): they see text values withheld, so the filter must not tell them
    a real value is there (``crm_platform.field_rules.refuse_personal_search``)."""
    clauses: list[dict[str, Any]] = []
    for raw in filters or []:
        match = _FILTER.match(raw.strip())
        if match is None:
            raise RuleViolation(
                f"invalid input: {param}: {raw!r} is not key=value, key>=value or key<=value", field=param
            )
        key, op, text = match.groups()
        d = fields.field(key)
        if d is None:
            raise RuleViolation(f"invalid input: {param}: no custom field {key!r}", field=param)
        if d.type == FieldType.TEXT:
            field_rules.refuse_personal_search(roles, {param: raw})
        clauses.append(_clause(d, op, text, param))
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _clause(d: FieldDefinition, op: str, text: str, param: str) -> dict[str, Any]:
    if op != "=" and d.type in (FieldType.TEXT, FieldType.CHOICE):
        raise RuleViolation(f"invalid input: {param}: {d.key} ({d.type.value}) takes = only", field=param)
    value: Any = text
    path = f"custom.{d.key}"
    try:
        if d.type == FieldType.NUMBER:
            value = float(text) if any(c in text for c in ".eE") else int(text)
        elif d.type == FieldType.MONEY:
            value, path = Decimal(text), f"{path}.amount"
            if not value.is_finite():
                raise ValueError
        elif d.type == FieldType.DATE:
            value = date.fromisoformat(text).isoformat()
    except (ValueError, InvalidOperation):
        raise RuleViolation(
            f"invalid input: {param}: {text!r} is not a {d.type.value} for {d.key}", field=param
        ) from None
    return {path: value if op == "=" else {"$gte" if op == ">=" else "$lte": value}}
