"""Customer success intervening before the close: the commitment review (service desk's side).

Sales asks for a review of a deal's commitments before it may win it
(``commitment_review.requested``); the review waits in customer success' list until a
CSM decides on every commitment, approving it or flagging it with a reason, and the
verdict goes back to sales (``commitment_review.completed``). A newer request for the
same deal supersedes a pending older one (sales changed the commitments). No I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from crm_contracts.events.common import Money
from crm_contracts.events.sales import Commitment, CommitmentReviewRequestedV1
from crm_contracts.events.service_desk import (
    CommitmentDecision,
    CommitmentDecisionKind,
    CommitmentReviewCompletedV1,
)
from crm_platform.actor import Actor
from crm_platform.errors import Conflict, RuleViolation


class ReviewStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    FLAGGED = "flagged"
    SUPERSEDED = "superseded"  # sales asked again (for changed commitments) before a verdict


@dataclass
class CommitmentReview:
    review_id: str
    deal_id: str
    account_name: str
    sales_owner: str
    value: Money | None
    commitments: list[Commitment]
    reasons: list[str]
    requested_by: str
    requested_at: datetime
    received_at: datetime
    correlation_id: str
    status: ReviewStatus = ReviewStatus.PENDING
    decisions: list[CommitmentDecision] = field(default_factory=list)
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    superseded_by: str | None = None

    @classmethod
    def receive(
        cls, request: CommitmentReviewRequestedV1, *, correlation_id: str, now: datetime
    ) -> CommitmentReview:
        return cls(
            review_id=request.review_id,
            deal_id=request.deal_id,
            account_name=request.account_name,
            sales_owner=request.sales_owner,
            value=request.value,
            commitments=list(request.commitments),
            reasons=list(request.reasons),
            requested_by=request.requested_by,
            requested_at=request.requested_at,
            received_at=now,
            correlation_id=correlation_id,
        )

    def supersede(self, newer: CommitmentReview) -> None:
        """A later request for the same deal replaces this one if it still waits for a verdict."""
        if self.status == ReviewStatus.PENDING:
            self.status, self.superseded_by = ReviewStatus.SUPERSEDED, newer.review_id

    def decide(
        self, decisions: Sequence[CommitmentDecision], actor: Actor, *, now: datetime
    ) -> CommitmentReviewCompletedV1:
        """The CSM's verdict: every commitment of the request decided once, a flag with its reason."""
        if self.status != ReviewStatus.PENDING:
            detail = f" by {self.superseded_by}" if self.superseded_by else ""
            raise Conflict(
                f"review {self.review_id} is {self.status}{detail}: it takes no verdict",
                review_id=self.review_id,
                status=self.status.value,
            )
        check_decisions(self.commitments, decisions)
        flagged = any(d.decision == CommitmentDecisionKind.FLAGGED for d in decisions)
        outcome = CommitmentDecisionKind.FLAGGED if flagged else CommitmentDecisionKind.APPROVED
        self.status = ReviewStatus(outcome.value)
        self.decisions = list(decisions)
        self.reviewed_by, self.reviewed_at = actor.user_id, now
        return CommitmentReviewCompletedV1(
            review_id=self.review_id,
            deal_id=self.deal_id,
            outcome=outcome,
            decisions=self.decisions,
            reviewed_by=actor.user_id,
            reviewed_at=now,
        )


def check_decisions(commitments: Sequence[Commitment], decisions: Sequence[CommitmentDecision]) -> None:
    """One decision per commitment of the review, none for another (422 naming each problem)."""
    expected = {c.commitment_id for c in commitments}
    given = Counter(d.commitment_id for d in decisions)
    problems = [f"commitment {c} is not part of this review" for c in sorted(set(given) - expected)]
    problems += [f"commitment {c} is decided {n} times" for c, n in sorted(given.items()) if n > 1]
    problems += [f"commitment {c} has no decision" for c in sorted(expected - set(given))]
    if problems:
        raise RuleViolation("; ".join(problems), problems=problems)


def arrive(review: CommitmentReview, others: Sequence[CommitmentReview]) -> list[CommitmentReview]:
    """A request arrives beside the deal's earlier ones: the older pending ones it supersedes
    (returned, to be saved), or, if a newer request is already here (a re-sent copy overtaken
    by later traffic), it is superseded itself."""
    newer = [o for o in others if o.requested_at > review.requested_at]
    if newer:
        review.supersede(max(newer, key=lambda o: o.requested_at))
        return []
    replaced = [o for o in others if o.status == ReviewStatus.PENDING]
    for older in replaced:
        older.supersede(review)
    return replaced
