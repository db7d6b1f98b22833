"""The opportunity: status from its stage, contacts, commitments, activities, flags.

Pure helpers over plain values (the store keeps opportunities as documents).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from crm_platform.errors import Conflict, RuleViolation

from sales.domain.pipeline import LOST, WON

MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_CURRENCY = "EUR"
DEFAULT_CONTRACT_MONTHS = 12  # a won deal whose fields name no contract_months


class OpportunityStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class Origin(StrEnum):
    LEAD = "lead"
    UPSELL = "upsell"


class ActivityType(StrEnum):
    CALL = "call"
    VISIT = "visit"
    EMAIL = "email"
    QUOTE = "quote"


def status_for_stage(stage: str) -> OpportunityStatus:
    if stage == WON:
        return OpportunityStatus.WON
    if stage == LOST:
        return OpportunityStatus.LOST
    return OpportunityStatus.OPEN


def check_open_for_edit(status: OpportunityStatus) -> None:
    """Fields of a won or lost opportunity are what was handed off: they stay as they are."""
    if status != OpportunityStatus.OPEN:
        raise Conflict(f"the opportunity is {status}: its fields can no longer change", status=status.value)


def merge_contacts(
    existing: Sequence[Mapping[str, Any]], extra: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Existing contacts first, then the extra ones; one per email (case-insensitive).

    A repeated email updates the details given for it (name, phone, role) and keeps
    the email as first spelled.
    """
    out: list[dict[str, Any]] = [dict(c) for c in existing]
    index = {str(c["email"]).casefold(): i for i, c in enumerate(out)}
    for c in extra:
        key = str(c["email"]).casefold()
        if key in index:
            merged = out[index[key]]
            merged.update({k: v for k, v in c.items() if v is not None and k != "email"})
        else:
            index[key] = len(out)
            out.append(dict(c))
    return out


def with_commitment_ids(
    commitments: Iterable[Mapping[str, Any]], new_id: Callable[[], str]
) -> list[dict[str, Any]]:
    """Each commitment gets its own id: customer success flags it back by that id."""
    return [{**c, "commitment_id": c.get("commitment_id") or new_id()} for c in commitments]


def check_activity(
    activity_type: ActivityType, amount: Decimal | None, occurred_at: datetime, now: datetime
) -> None:
    problems: list[str] = []
    if amount is not None and activity_type != ActivityType.QUOTE:
        problems.append("only a quote carries an amount")
    if occurred_at > now + MAX_CLOCK_SKEW:
        problems.append("occurred_at is in the future")
    if problems:
        raise RuleViolation("; ".join(problems), problems=problems)


def flagged_commitments(flags: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(f["commitment_id"]) for f in flags}
