"""Custom fields' pure rules (crm_platform.custom_fields): definitions, values, extension map, filters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from crm_contracts.compat import breaking_changes
from crm_contracts.events.leads import LeadCapturedV2
from crm_platform.custom_fields import (
    FieldDefinition,
    FieldSet,
    FieldSetIn,
    RecordType,
    export_cells,
    export_columns,
    filter_of,
    row_reason,
    to_extensions,
)
from crm_platform.errors import RuleViolation
from pydantic import ValidationError

DEFS = FieldSetIn.model_validate(
    {
        "fields": [
            {
                "key": "tier",
                "label": "Tier",
                "type": "choice",
                "required": True,
                "choices": ["gold", "silver"],
            },
            {"key": "seats", "label": "Seats", "type": "number", "integer": True, "minimum": 1},
            {"key": "ratio", "label": "Ratio", "type": "number", "maximum": 1},
            {"key": "renewal", "label": "Renewal", "type": "date", "latest": "2030-12-31"},
            {"key": "budget", "label": "Budget", "type": "money", "currency": "EUR", "minimum": 0},
            {"key": "note", "label": "Note", "type": "text", "max_length": 5},
        ]
    }
)
FIELDS = FieldSet(RecordType.LEAD, 1, tuple(DEFS.fields))


def _refusal(given: dict[str, Any]) -> str:
    with pytest.raises(RuleViolation) as caught:
        FIELDS.create(given)
    return caught.value.message


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "tier", "label": "Tier", "type": "choice"},  # no choices
        {"key": "tier", "label": "Tier", "type": "choice", "choices": ["a", "a"]},
        {"key": "n", "label": "N", "type": "number", "choices": ["a"]},  # an option of another type
        {"key": "n", "label": "N", "type": "number", "minimum": 5, "maximum": 1},
        {"key": "t", "label": "T", "type": "text", "pattern": "("},
        {"key": "Bad-Key", "label": "B", "type": "text"},
        {"key": "m", "label": "M", "type": "money", "currency": "euro"},
    ],
)
def test_a_definition_that_cannot_work_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FieldDefinition.model_validate(bad)


def test_keys_are_given_once() -> None:
    with pytest.raises(ValidationError, match="given more than once"):
        FieldSetIn.model_validate({"fields": [{"key": "a", "label": "A", "type": "text"}] * 2})


def test_values_are_checked_and_stored_in_their_type() -> None:
    stored = FIELDS.create(
        {
            "tier": " gold ",
            "seats": 3.0,
            "ratio": 0.5,
            "renewal": "2027-01-31",
            "budget": {"amount": "10.50", "currency": "EUR"},
            "note": "hi",
        }
    )
    assert stored == {
        "tier": "gold",
        "seats": 3,
        "ratio": 0.5,
        "renewal": "2027-01-31",
        "budget": {"amount": Decimal("10.50"), "currency": "EUR"},
        "note": "hi",
    }
    default_currency = FIELDS.create({"tier": "gold", "budget": {"amount": 5}})["budget"]
    assert default_currency == {"amount": Decimal(5), "currency": "EUR"}


@pytest.mark.parametrize(
    ("given", "named", "why"),
    [
        ({"seats": 2}, "tier", "is required"),
        ({"tier": "bronze"}, "tier", "must be one of gold, silver"),
        ({"tier": "gold", "seats": True}, "seats", "must be a number"),
        ({"tier": "gold", "seats": 1.5}, "seats", "whole number"),
        ({"tier": "gold", "seats": 0}, "seats", "at least 1"),
        ({"tier": "gold", "ratio": 2}, "ratio", "at most 1"),
        ({"tier": "gold", "ratio": float("nan")}, "ratio", "finite"),
        ({"tier": "gold", "renewal": "2031-01-01"}, "renewal", "between"),
        ({"tier": "gold", "renewal": "2027-02-30"}, "renewal", "YYYY-MM-DD"),
        ({"tier": "gold", "renewal": 20270101}, "renewal", "YYYY-MM-DD"),
        ({"tier": "gold", "budget": {"amount": "1.23456"}}, "budget", "at most 4 decimals"),
        ({"tier": "gold", "budget": {"amount": "-1"}}, "budget", "at least 0"),
        ({"tier": "gold", "budget": {"amount": "1", "currency": "USD"}}, "budget", "currency must be EUR"),
        ({"tier": "gold", "budget": "12"}, "budget", "must be"),
        ({"tier": "gold", "note": "toolong"}, "note", "at most 5"),
        ({"tier": "gold", "colour": "red"}, "colour", "not a custom field of lead"),
    ],
)
def test_a_value_that_does_not_fit_names_the_field_and_why(
    given: dict[str, Any], named: str, why: str
) -> None:
    message = _refusal(given)
    assert f"body.custom.{named}" in message
    assert why in message


def test_an_edit_sets_clears_and_keeps() -> None:
    current = FIELDS.create({"tier": "gold", "seats": 2, "note": "a"})
    assert FIELDS.edit(current, {"seats": 3, "note": None}) == {"tier": "gold", "seats": 3}
    with pytest.raises(RuleViolation, match="cannot be cleared"):
        FIELDS.edit(current, {"tier": None})
    removed = FieldSet(RecordType.LEAD, 2, (DEFS.fields[0],))
    assert removed.edit(current, {"tier": "silver"})["seats"] == 2, "a removed field's value stays"


def test_the_extension_map_leaves_text_and_undefined_fields_out() -> None:
    stored = FIELDS.create({"tier": "gold", "seats": 2, "budget": {"amount": "9.5"}, "note": "Ada"})
    stored["gone"] = "kept on the record, defined no more"
    extensions = to_extensions(FIELDS, stored)
    event = LeadCapturedV2.model_validate(
        {
            "lead_id": "l1",
            "email": "a@example.com",
            "name": "A",
            "company": "",
            "source_channel": "web",
            "consent": {"marketing_email": True},
            "merged": False,
            "custom": {k: v.model_dump() for k, v in extensions.items()},
        }
    )
    assert event.to_payload()["custom"] == {
        "tier": {"type": "choice", "value": "gold"},
        "seats": {"type": "number", "value": 2},
        "budget": {"type": "money", "value": {"amount": "9.5", "currency": "EUR"}},
    }


def test_a_definition_change_never_changes_the_contract() -> None:
    """The map is open by key and typed by value: its schema knows no definition."""
    schema = LeadCapturedV2.model_json_schema()
    assert breaking_changes(schema, LeadCapturedV2.model_json_schema()) == []
    assert "tier" not in str(schema["properties"]["custom"])


def test_filters_become_queries_on_the_wildcard_indexed_paths() -> None:
    assert filter_of(FIELDS, ["tier=gold"]) == {"custom.tier": "gold"}
    assert filter_of(FIELDS, ["seats>=2", "renewal<=2027-01-01"]) == {
        "$and": [{"custom.seats": {"$gte": 2}}, {"custom.renewal": {"$lte": "2027-01-01"}}]
    }
    assert filter_of(FIELDS, ["budget>=9.5"]) == {"custom.budget.amount": {"$gte": Decimal("9.5")}}
    assert filter_of(FIELDS, None) == {}
    for bad, why in (
        ("tier>=gold", "takes = only"),
        ("seats=many", "not a number"),
        ("colour=red", "no custom field"),
        ("nonsense", "is not key=value"),
    ):
        with pytest.raises(RuleViolation, match=why):
            filter_of(FIELDS, [bad])


def test_an_import_rows_cells_are_read_as_their_types_and_a_bad_one_names_the_field() -> None:
    cells = {"tier": "gold", "seats": "12", "ratio": "0.5", "budget": "10.5 EUR", "renewal": "2027-01-31"}
    assert FIELDS.create(FIELDS.from_cells(cells)) == {
        "tier": "gold",
        "seats": 12,
        "ratio": 0.5,
        "budget": {"amount": Decimal("10.5"), "currency": "EUR"},
        "renewal": "2027-01-31",
    }
    budget = FIELDS.create(FIELDS.from_cells({"tier": "gold", "budget": "7"}))["budget"]
    assert isinstance(budget, dict)
    assert budget["currency"] == "EUR"
    assert FIELDS.from_cells({"seats": 3}) == {"seats": 3}, "a JSON line's typed value passes as it is"
    for cells, reason in (
        ({"tier": "gold", "seats": "many"}, "custom.seats: 'many' is not a number"),
        ({"tier": "gold", "budget": "5 USD"}, "custom.budget: currency must be EUR"),
        ({"seats": "2"}, "custom.tier: is required for a lead"),
    ):
        with pytest.raises(RuleViolation) as caught:
            FIELDS.create(FIELDS.from_cells(cells))
        assert row_reason(caught.value) == reason


def test_export_cells_follow_the_definitions_and_read_back() -> None:
    values = FIELDS.create({"tier": "gold", "budget": {"amount": "10.50", "currency": "EUR"}, "note": "hi"})
    assert export_columns(FIELDS) == tuple(f"custom.{f.key}" for f in FIELDS.fields)
    cells = export_cells(FIELDS, values)
    assert cells == ("gold", None, None, None, "10.50 EUR", "hi")
    read_back = {f.key: c for f, c in zip(FIELDS.fields, cells, strict=True) if c is not None}
    assert FIELDS.create(FIELDS.from_cells(read_back)) == values
