"""The extension map: a record's custom field values in the events that carry the record (issue 9).

Administrators define custom fields per record type (lead, opportunity, account, ticket) at
run time, in the department that owns the record (``crm_platform.custom_fields``). Their
values travel in the event that describes the record, in an optional ``custom`` object:

    "custom": {
        "tier":    {"type": "choice", "value": "gold"},
        "seats":   {"type": "number", "value": 40},
        "renewal": {"type": "date",   "value": "2027-03-31"},
        "budget":  {"type": "money",  "value": {"amount": "125000.00", "currency": "EUR"}}
    }

**Why a definition change never breaks the contract gate.** The map's JSON Schema is open
by key (``additionalProperties``: any field key matching :data:`KEY_PATTERN`) and typed by
value (each entry says its ``type`` and carries a value of that type). Adding, renaming,
retyping or removing a custom field changes which keys appear in events, never the
schema: ``python -m crm_contracts.compat`` and ``crm_contracts.release_gate`` see the same
schema before and after. A consumer reads the entries it knows and skips the others; it
never needs the definitions to read a value, since each value names its type.

**Personal data.** Fields of type ``text`` may hold personal data (a nickname, a note
about a person): the services never put ``text`` values in events (the event keeps the
record's personal data out of the log, ``docs/governance.md``). ``text`` is in the enum so
that a later, explicit decision to carry non-personal text would not change the schema.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints

KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAX_FIELDS = 50


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    CHOICE = "choice"
    MONEY = "money"


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtensionMoney(_Value):
    amount: Annotated[str, StringConstraints(pattern=r"^-?\d{1,15}(\.\d{1,4})?$")] = Field(
        description="Exact decimal amount as a string (e.g. '125000.00')"
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(description="ISO 4217 code")


class ExtensionField(_Value):
    """One custom field's value, typed by value: ``type`` says how to read ``value``.

    number: a JSON number; date: ``YYYY-MM-DD``; choice and text: a string; money: an
    :class:`ExtensionMoney`.
    """

    type: FieldType
    value: (
        StrictInt
        | Annotated[StrictFloat, Field(allow_inf_nan=False)]
        | Annotated[str, StringConstraints(max_length=1000)]
        | ExtensionMoney
    )


ExtensionKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Extensions = Annotated[
    dict[ExtensionKey, ExtensionField],
    Field(
        max_length=MAX_FIELDS,
        description=(
            "The record's custom field values (the extension map, crm_contracts.extensions): "
            "open by key, typed by value; text fields are never carried"
        ),
    ),
]
