"""Commitment reviews at the service desk, without I/O: a request lands once, a newer one
supersedes a pending older one, and a CSM's verdict decides every commitment once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import (
    Commitment,
    CommitmentFlagStatus,
    CommitmentFlagUpdatedBySalesV1,
    CommitmentReviewRequestedV1,
    DealWonV1,
    Product,
)
from crm_contracts.events.service_desk import (
    CommitmentDecision,
    CommitmentDecisionKind,
    CommitmentReviewCompletedV1,
)
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from service_desk.domain.accounts import Account, account_from_deal
from service_desk.domain.reviews import ReviewStatus
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import reviews

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
CARLA = Actor.of("carla", ["customer_success_manager"])
APPROVED, FLAGGED = CommitmentDecisionKind.APPROVED, CommitmentDecisionKind.FLAGGED


def request(
    review_id: str = "r-1", at: datetime = T0, deal_id: str = "deal-1"
) -> CommitmentReviewRequestedV1:
    return CommitmentReviewRequestedV1(
        review_id=review_id,
        deal_id=deal_id,
        account_name="Acme GmbH",
        sales_owner="rita",
        value=Money(amount=150000.0),
        commitments=[
            Commitment(commitment_id="c-1", description="SSO by June"),
            Commitment(commitment_id="c-2", description="24/7 phone support"),
        ],
        reasons=["value 150000.00 EUR reaches the review threshold 100000.00"],
        requested_by="rita",
        requested_at=at,
    )


def make_uow() -> FakeUnitOfWork[FakeSuccessUnit]:
    return FakeUnitOfWork(FakeSuccessUnit(), clock=ManualClock(T0 + timedelta(minutes=1)))


async def arrive(uow: FakeUnitOfWork[FakeSuccessUnit], event: CommitmentReviewRequestedV1) -> None:
    env = envelope_for(event, source="sales", correlation_id="journey-1")
    await reviews.on_review_requested(uow, event, env)


async def test_a_request_is_stored_once_for_customer_success_with_its_journey() -> None:
    uow = make_uow()
    await arrive(uow, request())
    await arrive(uow, request())  # a re-sent copy
    review = await uow.unit.reviews.get("r-1")
    assert review is not None
    assert (review.status, review.deal_id, review.correlation_id) == (
        ReviewStatus.PENDING,
        "deal-1",
        "journey-1",
    )
    assert [c.commitment_id for c in review.commitments] == ["c-1", "c-2"]
    assert len(uow.unit.reviews.items) == 1


async def test_a_newer_request_supersedes_the_pending_one_and_a_late_older_copy_is_superseded() -> None:
    uow = make_uow()
    await arrive(uow, request("r-1", T0))
    await arrive(uow, request("r-2", T0 + timedelta(minutes=5)))
    await arrive(uow, request("r-0", T0 - timedelta(minutes=5)))  # overtaken by later traffic
    statuses = {r.review_id: (r.status, r.superseded_by) for r in uow.unit.reviews.items.values()}
    assert statuses == {
        "r-1": (ReviewStatus.SUPERSEDED, "r-2"),
        "r-2": (ReviewStatus.PENDING, None),
        "r-0": (ReviewStatus.SUPERSEDED, "r-2"),
    }
    with pytest.raises(Conflict, match="superseded by r-2"):
        await reviews.decide(uow, "r-1", [CommitmentDecision(commitment_id="c-1", decision=APPROVED)], CARLA)


async def test_the_verdict_decides_every_commitment_and_goes_back_to_sales_once() -> None:
    uow = make_uow()
    await arrive(uow, request())
    decisions = [
        CommitmentDecision(commitment_id="c-1", decision=APPROVED),
        CommitmentDecision(commitment_id="c-2", decision=FLAGGED, reason="no 24/7 team in that region"),
    ]
    review = await reviews.decide(uow, "r-1", decisions, CARLA)
    assert (review.status, review.reviewed_by) == (ReviewStatus.FLAGGED, "carla")
    [verdict] = uow.unit.emitted(CommitmentReviewCompletedV1)
    assert (verdict.review_id, verdict.deal_id, verdict.outcome) == ("r-1", "deal-1", FLAGGED)
    assert [(d.commitment_id, d.decision, d.reason) for d in verdict.decisions] == [
        ("c-1", APPROVED, None),
        ("c-2", FLAGGED, "no 24/7 team in that region"),
    ]
    assert uow.unit.events[0].correlation_id == "journey-1"
    with pytest.raises(Conflict, match="is flagged"):
        await reviews.decide(uow, "r-1", decisions, CARLA)
    assert len(uow.unit.emitted(CommitmentReviewCompletedV1)) == 1


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (["c-1"], "commitment c-2 has no decision"),
        (["c-1", "c-2", "c-9"], "commitment c-9 is not part of this review"),
        (["c-1", "c-1", "c-2"], "commitment c-1 is decided 2 times"),
    ],
)
async def test_a_verdict_that_misses_repeats_or_invents_a_commitment_is_refused(
    ids: list[str], problem: str
) -> None:
    uow = make_uow()
    await arrive(uow, request())
    with pytest.raises(RuleViolation, match=problem):
        await reviews.decide(
            uow, "r-1", [CommitmentDecision(commitment_id=c, decision=APPROVED) for c in ids], CARLA
        )
    stored = await uow.unit.reviews.get("r-1")
    assert stored is not None
    assert stored.status == ReviewStatus.PENDING
    assert uow.unit.events == []


async def test_an_unknown_review_is_not_found() -> None:
    with pytest.raises(NotFound):
        await reviews.decide(make_uow(), "nope", [], CARLA)


# --- after the win: sales' answer to a flagged commitment ---------------------------------------


def flagged_account() -> Account:
    won = DealWonV1(
        deal_id="deal-1",
        account_name="Acme GmbH",
        contacts=[Contact(name="Ada", email="ada@example.com")],
        products=[Product(sku="crm", name="CRM", quantity=1, unit_price=1000)],
        value=Money(amount=1000.0),
        commitments=[Commitment(commitment_id="c-1", description="SSO by June")],
        sales_owner="rita",
        won_at=T0,
    )
    account = account_from_deal(won, account_id="acc-1", csm="carla", checklist=["Kickoff"], now=T0)
    account.flag_commitment("c-1", flag_id="f-1", reason="no SSO before Q3", by="carla", now=T0)
    return account


def answer(
    status: CommitmentFlagStatus, at: datetime, account_id: str = "acc-1"
) -> CommitmentFlagUpdatedBySalesV1:
    return CommitmentFlagUpdatedBySalesV1(
        flag_id="f-1",
        deal_id="deal-1",
        account_id=account_id,
        commitment_id="c-1",
        status=status,
        resolution="moved to Q3, customer agreed" if status == CommitmentFlagStatus.RESOLVED else None,
        acted_by="rita",
        acted_at=at,
        flagged_at=T0,
    )


async def test_sales_answer_to_a_flag_shows_on_the_account_and_a_late_acknowledgement_changes_nothing() -> (
    None
):
    uow = make_uow()
    uow.unit.accounts.items["acc-1"] = flagged_account()
    for event in (
        answer(CommitmentFlagStatus.ACKNOWLEDGED, T0 + timedelta(hours=1)),
        answer(CommitmentFlagStatus.RESOLVED, T0 + timedelta(hours=3)),
        answer(CommitmentFlagStatus.ACKNOWLEDGED, T0 + timedelta(hours=1)),  # a re-sent copy, late
    ):
        await reviews.on_flag_answered(uow, event, envelope_for(event, source="sales", correlation_id="j"))
    account = await uow.unit.accounts.get("acc-1")
    assert account is not None
    c = account.commitment("c-1")
    assert (c.sales_answer, c.sales_resolution) == ("resolved", "moved to Q3, customer agreed")
    assert (c.sales_acknowledged_at, c.sales_resolved_at) == (
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=3),
    )

    stranger = answer(CommitmentFlagStatus.ACKNOWLEDGED, T0, account_id="acc-unknown")
    with pytest.raises(DeadLetter) as err:
        await reviews.on_flag_answered(
            uow, stranger, envelope_for(stranger, source="sales", correlation_id="j")
        )
    assert err.value.reason == "unknown_account"
