"""Turning form fields into API bodies (pure; the pages show the errors next to the fields)."""

from __future__ import annotations

import re
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


RENEWAL_OUTCOMES = ("renewed", "downgraded", "churned")
CHURN_REASONS = (
    "price",
    "competitor",
    "budget_cut",
    "product_fit",
    "low_adoption",
    "service_quality",
    "business_closed",
    "other",
)
SENTIMENTS = ("positive", "neutral", "negative")


def _day(form: dict[str, str], name: str, errors: dict[str, str], *, required: bool) -> str | None:
    """A ``YYYY-MM-DD`` date input as the API's RFC 3339 time: that day, 00:00 UTC."""
    raw = form.get(name, "").strip()
    if not raw:
        if required:
            errors[name] = "Enter a date."
        return None
    if len(raw) != 10 or not raw[:4].isdigit() or raw[4] != "-" or raw[7] != "-":
        errors[name] = f"'{raw}' is not a date (YYYY-MM-DD)."
        return None
    return f"{raw}T00:00:00Z"


def renewal_body(form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The renewal form as ``POST /accounts/{id}/renewals``: a churn needs its reason code.

    What else contradicts the outcome (a churn with a new value) is sent as typed: the API's
    rule answers it in words next to the field.
    """
    outcome = form.get("outcome", "")
    if outcome not in RENEWAL_OUTCOMES:
        errors["outcome"] = "Choose renewed, downgraded or churned."
    reason = form.get("churn_reason", "")
    if reason and reason not in CHURN_REASONS:
        errors["churn_reason"] = f"'{reason}' is not a churn reason."
    elif outcome == "churned" and not reason:
        errors["churn_reason"] = "Choose why the customer churned."
    body: dict[str, Any] = {"outcome": outcome, "churn_reason": reason or None, "notes": text(form, "notes")}
    if number(form, "new_value", errors) is not None:
        body["new_value"] = form["new_value"].strip().replace(",", "")
    months = form.get("new_term_months", "").strip()
    if months.isdigit():
        body["new_term_months"] = int(months)
    elif months:
        errors["new_term_months"] = f"'{months}' is not a whole number of months."
    return body


def checkin_body(form: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The check-in form as ``POST /accounts/{id}/checkins``; attendees comma-separated."""
    attendees = [a.strip() for a in form.get("attendees", "").split(",") if a.strip()]
    if not attendees:
        errors["attendees"] = "Name at least one attendee."
    sentiment = form.get("sentiment", "")
    if sentiment not in SENTIMENTS:
        errors["sentiment"] = "Choose positive, neutral or negative."
    return {
        "held_at": _day(form, "held_at", errors, required=True),
        "attendees": attendees,
        "sentiment": sentiment,
        "notes": text(form, "notes"),
    }


STAGE_ROWS_BLANK = 2  # empty rows under the stages, to add new ones


def pipeline_body(
    form: dict[str, str], rows: int, errors: dict[str, str]
) -> tuple[dict[str, Any], list[int]]:
    """The stage editor's rows (``stage-<i>.name``, ``.position``, ``.probability`` in percent,
    ``.required_fields`` comma-separated) as the body of the sales API's ``PUT /pipeline``.

    A row without a name is left out (that removes a stage); the rest are ordered by position,
    then by row. Returns the body and, per stage sent, the row it came from (to show the API's
    errors on the row). The rules of a pipeline are the API's; here only the numbers are read.
    """
    kept: list[tuple[float, int, dict[str, Any]]] = []
    for i in range(rows):
        name = form.get(f"stage-{i}.name", "").strip().lower()
        if not name:
            continue
        position = number(form, f"stage-{i}.position", errors)
        percent = number(form, f"stage-{i}.probability", errors, required=True)
        if percent is not None and not 0 <= percent <= 100:
            errors[f"stage-{i}.probability"] = "Between 0 and 100 (%)."
        fields = [f.strip() for f in form.get(f"stage-{i}.required_fields", "").split(",") if f.strip()]
        stage = {"name": name, "probability": round((percent or 0) / 100, 4), "required_fields": fields}
        kept.append((position if position is not None else float(i + 1), i, stage))
    kept.sort(key=lambda entry: (entry[0], entry[1]))
    if not kept:
        errors["form"] = "Keep at least one open stage, then won and lost."
    return {"stages": [stage for _, _, stage in kept]}, [row for _, row, _ in kept]


def pipeline_errors(
    message: str, fields: dict[str, str], stages: list[dict[str, Any]], rows: list[int]
) -> dict[str, str]:
    """The API's refusal of a pipeline on the rows it is about.

    A validation error names ``stages.<n>.<field>`` (the n-th stage sent); a rule of the pipeline
    (``invalid pipeline: ...; ...``) names each stage it is about as ``stage '<name>'``. What names
    no stage is shown above the table.
    """
    out: dict[str, str] = {}
    for key, words in fields.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "stages" and parts[1].isdigit() and int(parts[1]) < len(rows):
            out[f"stage-{rows[int(parts[1])]}.{parts[2]}"] = words
        else:
            out["form"] = words
    problems = (
        message.removeprefix("invalid pipeline: ").split("; ")
        if message.startswith("invalid pipeline")
        else []
    )
    row_of = {stage["name"]: row for stage, row in zip(stages, rows, strict=True)}
    general = []
    for problem in problems:
        named = re.search(r"stage (?:name )?'([^']+)'", problem)
        if named and named.group(1) in row_of:
            key = f"stage-{row_of[named.group(1)]}.name"
            out[key] = f"{out[key]}; {problem}" if key in out else problem
        else:
            general.append(problem)
    if general:
        out["form"] = "; ".join(general)
    elif not out:
        out["form"] = message
    return out
