"""Commitment reviews at the service desk on the real broker and mongod: sales' request lands
in customer success' list (with its receipt), a CSM's verdict on every commitment goes back
to sales, and bad verdicts get a 4xx naming what is wrong."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import Envelope, envelope_for, topics, utcnow
from crm_contracts.access import CONSUMES
from crm_contracts.events.common import Money
from crm_contracts.events.sales import Commitment, CommitmentReviewRequestedV1
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    eventually,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers_for(role: str, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for([role], user_id, user_id=user_id)}"}


CSM = headers_for("customer_success_manager", "carla.csm")
REP = headers_for("service_rep", "rita.rep")


@pytest.fixture(scope="module")
async def client(
    desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, list(CONSUMES["service-desk"]))
    async with running_app(create_app(settings)) as c:
        yield c


def request(deal_id: str) -> Envelope:
    event = CommitmentReviewRequestedV1(
        review_id=f"rev-{uuid.uuid4().hex[:10]}",
        deal_id=deal_id,
        account_name="Acme GmbH",
        sales_owner="sam.sales",
        value=Money(amount=180000.0),
        commitments=[
            Commitment(commitment_id="c-sso", description="SSO with Azure AD by go-live"),
            Commitment(commitment_id="c-247", description="24/7 phone support"),
        ],
        reasons=["value 180000.00 EUR reaches the review threshold 100000.00"],
        requested_by="sam.sales",
        requested_at=utcnow(),
    )
    return envelope_for(event, source="sales", correlation_id=f"journey-{deal_id}")


async def seen(reader: TopicReader, event_type: str, key: str, value: str) -> Envelope:
    def match(_: list[Any]) -> Envelope | None:
        return next((e for e in reader.envelopes(event_type) if e.payload.get(key) == value), None)

    found: Envelope = await reader.wait_for(match, what=f"{event_type} with {key}={value}")
    return found


async def test_a_review_request_waits_for_a_csm_whose_verdict_goes_back_to_sales(
    client: httpx.AsyncClient, kafka_bootstrap: str
) -> None:
    env = request(f"deal-{uuid.uuid4().hex[:8]}")
    review_id = env.payload["review_id"]
    reader = await TopicReader(kafka_bootstrap, topics.ACCOUNT_SIGNAL, topics.HANDOFF_RECEIPTS).start()
    try:
        await produce_envelope(kafka_bootstrap, topics.COMMITMENT_REVIEWS, env)

        async def listed() -> dict[str, Any] | None:
            r = await client.get("/commitment-reviews", headers=CSM)
            return next((i for i in r.json()["items"] if i["review_id"] == review_id), None)

        pending = await eventually(listed, what=f"review {review_id} listed")
        assert (pending["status"], pending["deal_id"]) == ("pending", env.payload["deal_id"])
        assert pending["reasons"] == env.payload["reasons"]
        receipt = await seen(reader, "handoff.received", "handoff_event_id", str(env.event_id))
        assert receipt.payload["handoff"] == "commitment-review-requested"
        assert (await client.get("/commitment-reviews", headers=REP)).status_code == 403

        url = f"/commitment-reviews/{review_id}/verdict"
        no_reason = {"decisions": [{"commitment_id": "c-sso", "decision": "flagged"}]}
        r = await client.post(url, json=no_reason, headers=CSM)
        assert r.status_code == 422, r.text
        assert "needs a reason" in r.text
        r = await client.post(
            url, json={"decisions": [{"commitment_id": "c-sso", "decision": "approved"}]}, headers=CSM
        )
        assert r.status_code == 422, r.text
        assert "commitment c-247 has no decision" in r.json()["message"]

        decisions = [
            {"commitment_id": "c-sso", "decision": "approved"},
            {"commitment_id": "c-247", "decision": "flagged", "reason": "support runs 8-20 CET only"},
        ]
        r = await client.post(url, json={"decisions": decisions}, headers=CSM)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["reviewed_by"]) == ("flagged", "carla.csm")
        verdict = await seen(reader, "commitment_review.completed", "review_id", review_id)
        assert verdict.source == "service-desk"
        assert verdict.correlation_id == env.correlation_id
        assert (verdict.payload["outcome"], verdict.payload["deal_id"]) == ("flagged", env.payload["deal_id"])
        assert verdict.payload["decisions"][1]["reason"] == "support runs 8-20 CET only"
        r = await client.post(url, json={"decisions": decisions}, headers=CSM)
        assert r.status_code == 409, r.text
        assert (await client.get(f"/commitment-reviews/{review_id}", headers=CSM)).json()[
            "status"
        ] == "flagged"
        assert (await client.get("/commitment-reviews/nope", headers=CSM)).status_code == 404
    finally:
        await reader.stop()
