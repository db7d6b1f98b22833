"""Customer success' commitment review on the real broker and mongod: a deal over the review
threshold is refused the win (409 naming what is missing) until the verdict that comes back
from the service desk approves the commitments it covers."""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.service_desk import (
    CommitmentDecision,
    CommitmentDecisionKind,
    CommitmentReviewCompletedV1,
)
from crm_contracts.topics import ACCOUNT_SIGNAL, COMMITMENT_REVIEWS, DEAL_WON, HANDOFF_RECEIPTS
from crm_platform.testing import TopicReader, eventually, produce_envelope

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales (conftest is not importable in importlib mode)

PRODUCTS = [{"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 100, "unit_price": 900.0}]
COMMITMENTS = [{"description": "SSO by go-live"}, {"description": "24/7 phone support"}]


async def set_policy(sales: Sales, value: float | None, count: int | None) -> dict[str, Any]:
    body = {"value_threshold": value, "commitment_threshold": count}
    r = await sales.client.put("/config/commitment-review", json=body, headers=sales.manager())
    assert r.status_code == 200, r.text
    return dict(r.json())


async def big_deal(sales: Sales, rep: str) -> str:
    opp = await sales.opportunity_for(rep, company="Analytical Engines plc")
    fields = {"amount": 90000, "products": PRODUCTS, "commitments": COMMITMENTS}
    r = await sales.client.patch(
        f"/opportunities/{opp['id']}", json={"fields": fields}, headers=sales.rep(rep)
    )
    assert r.status_code == 200, r.text
    return str(opp["id"])


def verdict(request: dict[str, Any], flag: str | None = None) -> Any:
    decisions = [
        CommitmentDecision(
            commitment_id=c["commitment_id"], decision=CommitmentDecisionKind.FLAGGED, reason="no"
        )
        if c["description"] == flag
        else CommitmentDecision(commitment_id=c["commitment_id"], decision=CommitmentDecisionKind.APPROVED)
        for c in request["commitments"]
    ]
    event = CommitmentReviewCompletedV1(
        review_id=request["review_id"],
        deal_id=request["deal_id"],
        outcome=CommitmentDecisionKind.FLAGGED if flag else CommitmentDecisionKind.APPROVED,
        decisions=decisions,
        reviewed_by="csm-carla",
        reviewed_at=utcnow(),
    )
    return envelope_for(event, source="service-desk", correlation_id=f"journey-{request['deal_id']}")


async def seen(reader: TopicReader, event_type: str, key: str, value: str) -> Envelope:
    def match(_: list[Any]) -> Envelope | None:
        return next((e for e in reader.envelopes(event_type) if e.payload.get(key) == value), None)

    found: Envelope = await reader.wait_for(match, what=f"{event_type} with {key}={value}")
    return found


async def review_status(sales: Sales, opp_id: str, review_id: str, status: str) -> dict[str, Any]:
    async def arrived() -> dict[str, Any] | None:
        opp = await sales.opportunity(opp_id)
        review = opp["commitment_review"]
        return opp if review and review["review_id"] == review_id and review["status"] == status else None

    found: dict[str, Any] = await eventually(arrived, what=f"review {review_id} {status} on {opp_id}")
    return found


async def test_only_managers_set_the_review_thresholds_and_bad_ones_get_a_422_naming_the_field(
    sales: Sales,
) -> None:
    config = await set_policy(sales, 50000, None)
    assert config["commitment_review"] == {"value_threshold": 50000.0, "commitment_threshold": None}
    r = await sales.client.get("/config", headers=sales.rep("rep-x"))
    assert r.json()["commitment_review"] == config["commitment_review"]
    r = await sales.client.put(
        "/config/commitment-review",
        json={"value_threshold": 1, "commitment_threshold": 1},
        headers=sales.rep("rep-x"),
    )
    assert r.status_code == 403
    bad_bodies = [
        ({"value_threshold": -5, "commitment_threshold": 2}, "value_threshold"),
        ({"value_threshold": 5, "commitment_threshold": 0}, "commitment_threshold"),
    ]
    for bad, field in bad_bodies:
        r = await sales.client.put("/config/commitment-review", json=bad, headers=sales.manager())
        assert r.status_code == 422, r.text
        assert field in r.text


async def test_a_deal_over_the_threshold_is_won_only_after_the_service_desk_approves_its_commitments(
    sales: Sales, kafka_bootstrap: str
) -> None:
    await set_policy(sales, 50000, None)
    rep = sales.uid("rhea")
    opp_id = await big_deal(sales, rep)
    r = await sales.move(opp_id, "won", rep)
    assert r.status_code == 409, r.text
    assert "no review requested" in r.json()["message"]
    assert r.json()["details"]["review_required_because"] == [
        "value 90000.00 EUR reaches the review threshold 50000.00"
    ]
    assert "no review requested" in (await sales.opportunity(opp_id))["win_blocked_by"]

    reader = await TopicReader(kafka_bootstrap, COMMITMENT_REVIEWS, HANDOFF_RECEIPTS, DEAL_WON).start()
    try:
        r = await sales.client.post(f"/opportunities/{opp_id}/commitment-review", headers=sales.rep(rep))
        assert r.status_code == 200, r.text
        review = r.json()["commitment_review"]
        assert (review["status"], review["covers_current_commitments"]) == ("pending", True)
        requested = await seen(reader, "commitment_review.requested", "deal_id", opp_id)
        assert requested.source == "sales"
        assert requested.payload["review_id"] == review["review_id"]
        assert [c["description"] for c in requested.payload["commitments"]] == [
            c["description"] for c in COMMITMENTS
        ]
        assert (await sales.move(opp_id, "won", rep)).status_code == 409

        flagged = verdict(requested.payload, flag="24/7 phone support")
        await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, flagged)
        opp = await review_status(sales, opp_id, review["review_id"], "flagged")
        flagged_id = next(
            c["commitment_id"] for c in requested.payload["commitments"] if "24/7" in c["description"]
        )
        assert (
            f"flagged commitments in review {review['review_id']} ({flagged_id}: no)" in opp["win_blocked_by"]
        )
        receipt = await seen(reader, "handoff.received", "handoff_event_id", str(flagged.event_id))
        assert receipt.payload["handoff"] == "commitment-review-completed"
        r = await sales.move(opp_id, "won", rep)
        assert r.status_code == 409
        assert f"({flagged_id}: no)" in r.json()["message"]

        fields = {"commitments": [{"description": "SSO by go-live"}, {"description": "phone support 8-20"}]}
        r = await sales.client.patch(
            f"/opportunities/{opp_id}", json={"fields": fields}, headers=sales.rep(rep)
        )
        assert r.status_code == 200, r.text
        assert r.json()["commitment_review"]["covers_current_commitments"] is False
        r = await sales.client.post(f"/opportunities/{opp_id}/commitment-review", headers=sales.rep(rep))
        second = r.json()["commitment_review"]["review_id"]
        again = await seen(reader, "commitment_review.requested", "review_id", second)
        await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, verdict(again.payload))
        await review_status(sales, opp_id, second, "approved")
        assert (await sales.opportunity(opp_id))["win_blocked_by"] is None
        r = await sales.move(opp_id, "won", rep)
        assert r.status_code == 200, r.text
        won = await seen(reader, "deal.won", "deal_id", opp_id)
        assert [c["description"] for c in won.payload["commitments"]] == [
            "SSO by go-live",
            "phone support 8-20",
        ]
    finally:
        await reader.stop()
