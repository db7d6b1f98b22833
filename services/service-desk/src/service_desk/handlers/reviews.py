"""Commitment reviews: the handlers (load -> one domain method -> save -> emit).

Sales' ``commitment_review.requested`` lands in customer success' list; a CSM's verdict
(every commitment approved or flagged with a reason) goes back as
``commitment_review.completed``, in the same transaction (the outbox).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from crm_contracts import Envelope
from crm_contracts.events.sales import CommitmentFlagUpdatedBySalesV1, CommitmentReviewRequestedV1
from crm_contracts.events.service_desk import CommitmentDecision
from crm_platform.actor import Actor
from crm_platform.clock import now_millis
from crm_platform.consumer import DeadLetter
from crm_platform.errors import NotFound

from service_desk.domain.reviews import CommitmentReview, arrive
from service_desk.repository import SuccessUnit
from service_desk.repository import SuccessUoW as Uow

log = logging.getLogger("crm.service_desk.reviews")


async def on_review_requested(uow: Uow, event: CommitmentReviewRequestedV1, envelope: Envelope) -> None:
    """Store the request for a CSM (once: a re-sent copy finds it stored)."""

    async def work(unit: SuccessUnit) -> None:
        if await unit.reviews.get(event.review_id) is not None:
            log.info("commitment review %s already received", event.review_id)
            return
        review = CommitmentReview.receive(
            event, correlation_id=envelope.correlation_id, now=now_millis(uow.clock)
        )
        for older in arrive(review, await unit.reviews.of_deal(event.deal_id)):
            await unit.reviews.save(older)
        await unit.reviews.add(review)

    await uow.run(work)


async def on_flag_answered(uow: Uow, event: CommitmentFlagUpdatedBySalesV1, envelope: Envelope) -> None:
    """After the win, sales acknowledged or resolved a flagged commitment: the account shows it."""

    async def work(unit: SuccessUnit) -> None:
        account = await unit.accounts.get(event.account_id)
        if account is None:
            raise DeadLetter("unknown_account", f"the desk has no account {event.account_id!r}")
        if account.record_flag_answer(event):
            await unit.accounts.save(account)
        else:
            log.info("flag %s: %s answer changes nothing", event.flag_id, event.status.value)

    await uow.run(work)


async def get_review(uow: Uow, review_id: str) -> CommitmentReview:
    async def work(unit: SuccessUnit) -> CommitmentReview:
        return await _load(unit, review_id)

    return await uow.run(work)


async def decide(
    uow: Uow, review_id: str, decisions: Sequence[CommitmentDecision], actor: Actor
) -> CommitmentReview:
    """A CSM's verdict on every commitment; it goes back to sales (the win waits on it)."""

    async def work(unit: SuccessUnit) -> CommitmentReview:
        review = await _load(unit, review_id)
        event = review.decide(decisions, actor, now=now_millis(uow.clock))
        await unit.reviews.save(review)
        unit.emit(event, correlation_id=review.correlation_id)
        return review

    return await uow.run(work)


async def _load(unit: SuccessUnit, review_id: str) -> CommitmentReview:
    review = await unit.reviews.get(review_id)
    if review is None:
        raise NotFound(f"no commitment review {review_id!r}", review_id=review_id)
    return review
