"""Turning form fields into API bodies (pure; the pages show the errors next to the fields)."""

from __future__ import annotations

from typing import Any


class FormErrors(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def text(form: dict[str, str], name: str) -> str | None:
    value = form.get(name, "").strip()
    return value or None


def number(
    form: dict[str, str], name: str, errors: dict[str, str], *, required: bool = False
) -> float | None:
    raw = form.get(name, "").strip().replace(",", "")
    if not raw:
        if required:
            errors[name] = "Enter a number."
        return None
    try:
        value = float(raw)
    except ValueError:
        errors[name] = f"'{raw}' is not a number."
        return None
    if value != value or value in (float("inf"), float("-inf")):
        errors[name] = "Enter a finite number."
        return None
    return value


def products(raw: str, errors: dict[str, str], name: str = "products") -> list[dict[str, Any]] | None:
    """One product per line: ``SKU; name; quantity; unit price``."""
    items = []
    for n, line in enumerate(row for row in raw.splitlines() if row.strip()):
        parts = [p.strip() for p in line.split(";")]
        if len(parts) != 4:
            errors[name] = f"Line {n + 1}: write 'SKU; name; quantity; unit price'."
            return None
        try:
            items.append(
                {"sku": parts[0], "name": parts[1], "quantity": int(parts[2]), "unit_price": parts[3]}
            )
        except ValueError:
            errors[name] = f"Line {n + 1}: the quantity '{parts[2]}' is not a whole number."
            return None
    return items or None


def commitments(raw: str) -> list[dict[str, Any]] | None:
    """One commitment per line; an optional ``| YYYY-MM-DD`` due date at the end."""
    items = []
    for line in (row.strip() for row in raw.splitlines()):
        if not line:
            continue
        description, _, due = line.partition("|")
        item: dict[str, Any] = {"description": description.strip()}
        due = due.strip()
        if due:
            # The API takes an RFC 3339 time with a zone: a plain date means that day, UTC.
            item["due_date"] = f"{due}T00:00:00Z" if len(due) == 10 else due
        items.append(item)
    return items or None


STAGE_FIELDS = ("amount", "budget", "decision_maker", "close_date", "products", "commitments", "lost_reason")
FIELD_LABELS = {
    "amount": "Amount",
    "budget": "Budget",
    "decision_maker": "Decision maker",
    "close_date": "Close date",
    "products": "Products (one per line: SKU; name; quantity; unit price)",
    "commitments": "Commitments made to the customer (one per line; optional '| YYYY-MM-DD' due date)",
    "lost_reason": "Why it was lost",
}


def stage_fields(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The opportunity fields a stage move sends (only those filled in)."""
    errors: dict[str, str] = {}
    fields: dict[str, Any] = {}
    for name in ("amount", "budget"):
        value = number(form, name, errors)
        if value is not None:
            fields[name] = form[name].strip().replace(",", "")
    for name in ("decision_maker", "close_date", "lost_reason"):
        written = text(form, name)
        if written:
            fields[name] = written
    if text(form, "products"):
        parsed = products(form["products"], errors)
        if parsed:
            fields["products"] = parsed
    if text(form, "commitments"):
        fields["commitments"] = commitments(form["commitments"])
    return fields, errors
