"""Customer success' commitment review of a deal before it is won (sales' side).

A deal whose value or number of commitments reaches a threshold (:class:`ReviewPolicy`,
sales' configuration) cannot be won until customer success has approved what sales
promised: sales requests a review (``commitment_review.requested``), a CSM approves or
flags each commitment with a reason and the verdict comes back
(``commitment_review.completed``). A review covers the commitments as they were when it
was requested: changing them afterwards (a flagged promise reworded or dropped) needs a
new review. :func:`missing_review` says, in words a rep can act on, why a win is refused.
No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from crm_contracts.events.sales import Commitment
from crm_contracts.events.service_desk import CommitmentDecisionKind, CommitmentReviewCompletedV1
from crm_platform.errors import RuleViolation

DEFAULT_VALUE_THRESHOLD = Decimal("100000")
DEFAULT_COMMITMENT_THRESHOLD = 3
MAX_COMMITMENT_THRESHOLD = 200


class ReviewStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    FLAGGED = "flagged"


@dataclass(frozen=True)
class ReviewPolicy:
    """When a deal needs customer success' review: value at or over ``value_threshold``
    (in the deal's currency), or at least ``commitment_threshold`` commitments; None
    switches that criterion off."""

    value_threshold: Decimal | None = DEFAULT_VALUE_THRESHOLD
    commitment_threshold: int | None = DEFAULT_COMMITMENT_THRESHOLD

    def __post_init__(self) -> None:
        problems = []
        if self.value_threshold is not None and self.value_threshold <= 0:
            problems.append("value_threshold must be above 0 (or null: no value criterion)")
        if self.commitment_threshold is not None and not (
            1 <= self.commitment_threshold <= MAX_COMMITMENT_THRESHOLD
        ):
            problems.append(f"commitment_threshold must be 1..{MAX_COMMITMENT_THRESHOLD} (or null)")
        if problems:
            raise RuleViolation("; ".join(problems), problems=problems)

    def reasons(self, amount: Decimal | None, currency: str, commitments: int) -> list[str]:
        """Why a deal of this value and number of commitments needs a review (empty: it does not)."""
        out: list[str] = []
        if self.value_threshold is not None and amount is not None and amount >= self.value_threshold:
            out.append(
                f"value {amount:.2f} {currency} reaches the review threshold {self.value_threshold:.2f}"
            )
        if self.commitment_threshold is not None and commitments >= self.commitment_threshold:
            out.append(f"{commitments} commitments reach the review threshold of {self.commitment_threshold}")
        return out


def commitment_terms(commitments: Iterable[Commitment]) -> list[tuple[str, str | None]]:
    """What a review covers: each commitment's wording and due date (ids may be re-issued)."""
    return sorted((c.description, c.due_date.isoformat() if c.due_date else None) for c in commitments)


@dataclass(frozen=True)
class Decision:
    commitment_id: str
    decision: CommitmentDecisionKind
    reason: str | None


@dataclass
class CommitmentReview:
    """The latest review of an opportunity's commitments, as sales sees it."""

    review_id: str
    requested_by: str
    requested_at: datetime
    reasons: list[str]
    commitments: list[Commitment]
    status: ReviewStatus = ReviewStatus.PENDING
    decisions: list[Decision] = field(default_factory=list)
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    received_at: datetime | None = None

    def covers(self, commitments: Sequence[Commitment]) -> bool:
        return commitment_terms(self.commitments) == commitment_terms(commitments)

    def record(self, verdict: CommitmentReviewCompletedV1, now: datetime) -> bool:
        """Store customer success' verdict; False when it is not for this review or already stored."""
        if verdict.review_id != self.review_id or self.status != ReviewStatus.PENDING:
            return False
        self.status = ReviewStatus(verdict.outcome.value)
        self.decisions = [Decision(d.commitment_id, d.decision, d.reason) for d in verdict.decisions]
        self.reviewed_by, self.reviewed_at, self.received_at = verdict.reviewed_by, verdict.reviewed_at, now
        return True

    def flagged(self) -> list[Decision]:
        return [d for d in self.decisions if d.decision == CommitmentDecisionKind.FLAGGED]


def missing_review(
    review: CommitmentReview | None, reasons: Sequence[str], commitments: Sequence[Commitment]
) -> str | None:
    """What keeps a deal that needs a review (``reasons``) from being won; None: nothing."""
    if not reasons:
        return None
    why = "; ".join(reasons)
    if review is None:
        return (
            f"customer success must review this deal's commitments before it is won ({why}): "
            "no review requested"
        )
    if not review.covers(commitments):
        return (
            f"the commitments changed since review {review.review_id} was requested ({why}): "
            "request a new review"
        )
    if review.status == ReviewStatus.PENDING:
        return f"review {review.review_id} is still pending with customer success ({why})"
    if review.status == ReviewStatus.FLAGGED:
        flags = "; ".join(f"{d.commitment_id}: {d.reason}" for d in review.flagged())
        return (
            f"customer success flagged commitments in review {review.review_id} ({flags}): "
            "change them and request a new review"
        )
    return None


def as_commitments(values: Iterable[Mapping[str, object]]) -> list[Commitment]:
    """The opportunity's stored commitments as the contract's model (422 if one is malformed)."""
    try:
        return [Commitment.model_validate(v) for v in values]
    except ValueError as exc:
        raise RuleViolation(f"the opportunity's commitments are not valid: {exc}") from None
