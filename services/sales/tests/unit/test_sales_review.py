"""Customer success' commitment review before the win: the policy, the entity and the handlers on fakes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Consent, Contact
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import CommitmentReviewRequestedV1, DealWonV2, Verdict
from crm_contracts.events.service_desk import (
    CommitmentDecision,
    CommitmentDecisionKind,
    CommitmentReviewCompletedV1,
)
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from sales import handlers
from sales.domain.assignment import Rep
from sales.domain.opportunity import OpportunityStatus
from sales.domain.review import ReviewPolicy, ReviewStatus
from sales.fakes import FakeSalesUnit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RITA = Actor.of("rita", ["sales_rep"])
Uow = FakeUnitOfWork[FakeSalesUnit]
APPROVED, FLAGGED = CommitmentDecisionKind.APPROVED, CommitmentDecisionKind.FLAGGED
FIELDS: dict[str, object] = {
    "budget": Decimal("250000"),
    "decision_maker": "Ada",
    "close_date": "2026-06-30",
    "amount": Decimal("150000.00"),
    "currency": "EUR",
    "products": [{"sku": "A", "name": "Seat", "quantity": 100, "unit_price": Decimal("1500.00")}],
    "commitments": [
        {"description": "SSO by June", "due_date": None},
        {"description": "24/7 phone support", "due_date": None},
    ],
}


# -- the policy -------------------------------------------------------------------------------


def test_the_policy_names_each_threshold_a_deal_reaches() -> None:
    policy = ReviewPolicy(Decimal("100000"), 3)
    assert policy.reasons(Decimal("99999.99"), "EUR", 2) == []
    assert policy.reasons(Decimal("100000"), "EUR", 2) == [
        "value 100000.00 EUR reaches the review threshold 100000.00"
    ]
    assert policy.reasons(None, "EUR", 3) == ["3 commitments reach the review threshold of 3"]
    assert len(policy.reasons(Decimal("1e6"), "USD", 7)) == 2
    assert ReviewPolicy(None, None).reasons(Decimal("1e9"), "EUR", 200) == []


@pytest.mark.parametrize(("value", "count"), [(Decimal("0"), 3), (Decimal("-1"), 3), (None, 0), (None, 201)])
def test_a_policy_with_a_nonsense_threshold_is_refused(value: Decimal | None, count: int) -> None:
    with pytest.raises(RuleViolation):
        ReviewPolicy(value, count)


# -- the handlers -----------------------------------------------------------------------------


def make_uow(policy: ReviewPolicy | None = None) -> Uow:
    ids = (f"id-{n}" for n in itertools.count(1))
    uow = FakeUnitOfWork(FakeSalesUnit([Rep("rita", True)]), clock=ManualClock(T0), new_id=lambda: next(ids))
    if policy is not None:
        uow.unit.team.policy = policy
    return uow


async def negotiating(uow: Uow, fields: dict[str, object] = FIELDS) -> str:
    """An opportunity in the last stage before the win, with ``fields`` set."""
    lead = LeadQualifiedV1(
        lead_id="l-1",
        contact=Contact(name="Ada", email="ada@example.com"),
        company="Engines Ltd",
        score=80,
        threshold=50,
        score_reasons=[],
        source_channel="web",
        behaviour_summary={},
        consent=Consent(marketing_email=True),
        qualified_at=T0,
    )
    await handlers.on_lead_qualified(uow, lead, envelope_for(lead, source="leads", correlation_id="j-1"))
    result = await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)
    assert result.opportunity is not None
    for stage in ("discovery", "proposal", "negotiation"):
        await handlers.move_stage(uow, result.opportunity.id, stage, fields, [], RITA)
    return result.opportunity.id


async def win(uow: Uow, opp_id: str, fields: dict[str, object] | None = None) -> Any:
    return await handlers.move_stage(uow, opp_id, "won", fields or {}, [], RITA)


def verdict(request: CommitmentReviewRequestedV1, *flags: str, review_id: str | None = None) -> Any:
    decisions = [
        CommitmentDecision(commitment_id=c.commitment_id, decision=FLAGGED, reason=f"cannot: {c.description}")
        if c.description in flags
        else CommitmentDecision(commitment_id=c.commitment_id, decision=APPROVED)
        for c in request.commitments
    ]
    return CommitmentReviewCompletedV1(
        review_id=review_id or request.review_id,
        deal_id=request.deal_id,
        outcome=FLAGGED if flags else APPROVED,
        decisions=decisions,
        reviewed_by="csm-1",
        reviewed_at=T0,
    )


async def deliver(uow: Uow, event: CommitmentReviewCompletedV1) -> None:
    env = envelope_for(event, source="service-desk", correlation_id="j-1")
    await handlers.on_commitment_review_completed(uow, event, env)


async def test_a_deal_over_the_threshold_is_won_only_after_customer_success_approves_its_commitments() -> (
    None
):
    uow = make_uow(ReviewPolicy(Decimal("100000"), 5))
    opp_id = await negotiating(uow)
    with pytest.raises(Conflict) as refused:
        await win(uow, opp_id)
    assert "no review requested" in refused.value.message
    assert refused.value.details["review_required_because"] == [
        "value 150000.00 EUR reaches the review threshold 100000.00"
    ]

    opp = await handlers.request_review(uow, opp_id, RITA)
    [request] = uow.unit.emitted(CommitmentReviewRequestedV1)
    assert (request.deal_id, request.requested_by, request.value and request.value.amount) == (
        opp_id,
        "rita",
        150000.0,
    )
    assert [c.description for c in request.commitments] == ["SSO by June", "24/7 phone support"]
    assert opp.commitment_review is not None
    assert opp.commitment_review.status == ReviewStatus.PENDING
    with pytest.raises(Conflict, match="still pending with customer success"):
        await win(uow, opp_id)

    await deliver(uow, verdict(request))
    won = await win(uow, opp_id)
    assert won.status == OpportunityStatus.WON
    assert [d.deal_id for d in uow.unit.emitted(DealWonV2)] == [opp_id]


async def test_a_flagged_commitment_blocks_the_win_until_it_is_changed_and_reviewed_again() -> None:
    uow = make_uow(ReviewPolicy(None, 2))
    opp_id = await negotiating(uow)
    await handlers.request_review(uow, opp_id, RITA)
    [first] = uow.unit.emitted(CommitmentReviewRequestedV1)
    await deliver(uow, verdict(first, "24/7 phone support"))
    with pytest.raises(Conflict) as refused:
        await win(uow, opp_id)
    assert "flagged" in refused.value.message
    assert "cannot: 24/7 phone support" in refused.value.message
    assert refused.value.details["review_status"] == "flagged"

    reworded = {**FIELDS, "commitments": [{"description": "SSO by June"}, {"description": "phone 9-17"}]}
    await handlers.update_fields(uow, opp_id, reworded, [], RITA)
    with pytest.raises(Conflict, match="commitments changed since review"):
        await win(uow, opp_id)
    await handlers.request_review(uow, opp_id, RITA)
    second = uow.unit.emitted(CommitmentReviewRequestedV1)[-1]
    assert second.review_id != first.review_id
    await deliver(uow, verdict(first))  # a late verdict on the superseded review changes nothing
    with pytest.raises(Conflict, match="still pending"):
        await win(uow, opp_id)
    await deliver(uow, verdict(second))
    assert (await win(uow, opp_id)).status == OpportunityStatus.WON


async def test_changing_the_commitments_on_the_winning_move_needs_a_new_review() -> None:
    uow = make_uow(ReviewPolicy(None, 2))
    opp_id = await negotiating(uow)
    await handlers.request_review(uow, opp_id, RITA)
    [request] = uow.unit.emitted(CommitmentReviewRequestedV1)
    await deliver(uow, verdict(request))
    more: dict[str, object] = {
        "commitments": [
            {"description": "SSO by June"},
            {"description": "24/7 phone support"},
            {"description": "on-site"},
        ]
    }
    with pytest.raises(Conflict, match="request a new review"):
        await win(uow, opp_id, more)
    opp = await uow.unit.opportunities.get(opp_id)
    assert opp is not None
    assert opp.status == OpportunityStatus.OPEN


async def test_a_deal_under_every_threshold_is_won_without_a_review() -> None:
    uow = make_uow(ReviewPolicy(Decimal("1000000"), 3))
    opp_id = await negotiating(uow)
    assert (await win(uow, opp_id)).status == OpportunityStatus.WON
    assert uow.unit.emitted(CommitmentReviewRequestedV1) == []


async def test_asking_twice_for_the_same_commitments_is_refused_and_won_deals_take_no_request() -> None:
    uow = make_uow(ReviewPolicy(None, 2))
    opp_id = await negotiating(uow)
    await handlers.request_review(uow, opp_id, RITA)
    with pytest.raises(Conflict, match="already covers these commitments"):
        await handlers.request_review(uow, opp_id, RITA)
    [request] = uow.unit.emitted(CommitmentReviewRequestedV1)
    await deliver(uow, verdict(request))
    await deliver(uow, verdict(request, "SSO by June"))  # a second verdict for the same review: ignored
    await win(uow, opp_id)
    with pytest.raises(Conflict, match="is won"):
        await handlers.request_review(uow, opp_id, RITA)


async def test_a_verdict_for_an_unknown_deal_is_a_dead_letter() -> None:
    uow = make_uow()
    stranger = CommitmentReviewCompletedV1(
        review_id="r-1", deal_id="nope", outcome=APPROVED, decisions=[], reviewed_by="c", reviewed_at=T0
    )
    with pytest.raises(DeadLetter) as err:
        await deliver(uow, stranger)
    assert err.value.reason == "unknown_deal"


def test_the_verdict_contract_refuses_a_flag_without_a_reason_and_an_outcome_that_hides_a_flag() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        CommitmentDecision(commitment_id="c-1", decision=FLAGGED, reason=" ")
    with pytest.raises(ValueError, match="outcome must be 'flagged'"):
        CommitmentReviewCompletedV1(
            review_id="r",
            deal_id="d",
            outcome=APPROVED,
            decisions=[CommitmentDecision(commitment_id="c-1", decision=FLAGGED, reason="no")],
            reviewed_by="c",
            reviewed_at=T0,
        )
