"""Account signals from the service desk: upsell chances become opportunities, and
over-promise flags are recorded on the won deal (unknown deals are dead-lettered)."""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.service_desk import CommitmentFlaggedV1, SignalKind, UpsellSpottedV1
from crm_contracts.topics import ACCOUNT_SIGNAL, HANDOFF_RECEIPTS, SALES_EVENTS, dead_letter_topic
from crm_platform.mongo import PROCESSED
from crm_platform.testing import TopicReader, eventually, produce_envelope
from sales import store as repo

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales (conftest is not importable in importlib mode)

PRODUCTS = [{"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 10, "unit_price": 40.0}]


async def won_deal(sales: Sales, rep: str) -> dict[str, Any]:
    opp = await sales.opportunity_for(rep, company="Lovelace Analytics")
    r = await sales.move(
        opp["id"],
        "won",
        rep,
        fields={
            "amount": 400,
            "products": PRODUCTS,
            "commitments": [{"description": "Custom export by Q3"}, {"description": "24/7 support"}],
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def upsell(deal_id: str, owner: str, signal_id: str, value: float | None = 12000.0) -> Envelope:
    event = UpsellSpottedV1(
        signal_id=signal_id,
        account_id=f"acct-{deal_id}",
        deal_id=deal_id,
        account_name="Lovelace Analytics",
        sales_owner=owner,
        kind=SignalKind.UPSELL,
        description="Asked about 40 more seats for the Berlin office",
        estimated_value=value,
        spotted_by="sven",
    )
    return envelope_for(event, source="service-desk", correlation_id=f"journey-{deal_id}")


async def opportunity_for_signal(sales: Sales, signal_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        return await sales.runtime.db[repo.OPPORTUNITIES].find_one({"signal_id": signal_id})

    doc: dict[str, Any] = await eventually(found, what=f"opportunity for signal {signal_id}")
    opp: dict[str, Any] = await sales.opportunity(doc["_id"])
    return opp


async def test_an_upsell_signal_becomes_an_opportunity_for_the_accounts_sales_owner(
    sales: Sales, kafka_bootstrap: str
) -> None:
    rep = sales.uid("uma")
    deal = await won_deal(sales, rep)
    reader = await TopicReader(kafka_bootstrap, SALES_EVENTS, HANDOFF_RECEIPTS).start()
    try:
        signal = sales.uid("sig")
        env = upsell(deal["id"], rep, signal)
        await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, env)
        opp = await opportunity_for_signal(sales, signal)
        assert opp["origin"] == "upsell"
        assert opp["owner"] == rep
        assert opp["assigned_by"] == "account_owner"
        assert opp["stage"] == "qualification"
        assert opp["status"] == "open"
        assert opp["account_name"] == "Lovelace Analytics"
        assert opp["account_id"] == f"acct-{deal['id']}"
        assert opp["source_deal_id"] == deal["id"]
        assert opp["amount"] == 12000.0
        assert opp["signal_kind"] == "upsell"
        assert opp["description"].startswith("Asked about 40 more seats")
        # The account's contacts come from the won deal: nobody asks the customer twice.
        assert [c["email"] for c in opp["contacts"]] == [c["email"] for c in deal["contacts"]]
        r = await sales.client.get("/opportunities", params={"origin": "upsell"}, headers=sales.rep(rep))
        assert [o["id"] for o in r.json()["items"]] == [opp["id"]]

        (created,) = await reader.wait_for(
            lambda _: (
                [e for e in reader.envelopes("opportunity.created") if e.partition_key == opp["id"]] or None
            ),
            what="opportunity.created for the upsell",
        )
        assert created.payload == {
            "opportunity_id": opp["id"],
            "account_name": "Lovelace Analytics",
            "owner": rep,
            "stage": "qualification",
            "origin": "upsell",
            "lead_id": None,
            "signal_id": signal,
            "amount": 12000.0,
            "source": None,  # v2: how a direct opportunity came in; none for an upsell
            "account_id": None,  # v2: sales' own account of a direct opportunity
            "custom": {},  # v3: the opportunity's custom values (none for an upsell)
        }
        assert created.schema_version == 3
        assert created.causation_id == str(env.event_id)
        # (any sales process on the broker receipts it; they all say the same)
        rcpt, *_ = await reader.wait_for(
            lambda _: (
                [
                    e
                    for e in reader.envelopes("handoff.received")
                    if e.payload["handoff_event_id"] == str(env.event_id)
                ]
                or None
            ),
            what="upsell-spotted receipt",
        )
        assert rcpt.payload["handoff"] == "upsell-spotted"
    finally:
        await reader.stop()

    # The same signal re-sent as a new event does not open a second opportunity.
    again = upsell(deal["id"], rep, signal)
    await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, again)

    async def processed() -> bool:
        return await sales.runtime.db[PROCESSED].count_documents({"_id": str(again.event_id)}) == 1

    await eventually(processed, what="second delivery processed")
    assert await sales.runtime.db[repo.OPPORTUNITIES].count_documents({"signal_id": signal}) == 1


async def test_an_upsell_for_an_inactive_owner_goes_round_robin(sales: Sales, kafka_bootstrap: str) -> None:
    gone, x, y = sales.uid("gone"), sales.uid("xavi"), sales.uid("yara")
    await sales.set_roster(**{gone: False, x: True, y: True})
    signal = sales.uid("sig")
    await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, upsell("deal-elsewhere", gone, signal, None))
    opp = await opportunity_for_signal(sales, signal)
    assert opp["owner"] in {x, y}
    assert opp["assigned_by"] == "round_robin"
    assert opp["amount"] is None
    assert opp["contacts"] == []


async def test_a_commitment_flag_is_recorded_on_the_won_deal(sales: Sales, kafka_bootstrap: str) -> None:
    rep = sales.uid("fred")
    deal = await won_deal(sales, rep)
    promised = deal["commitments"][0]["commitment_id"]
    flag = CommitmentFlaggedV1(
        flag_id=sales.uid("flag"),
        account_id="acct-1",
        deal_id=deal["id"],
        commitment_id=promised,
        reason="The custom export is not on the roadmap",
        flagged_by="carla",
    )
    env = envelope_for(flag, source="service-desk", correlation_id="journey-x")
    await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, env)

    async def flagged() -> dict[str, Any] | None:
        opp: dict[str, Any] = await sales.opportunity(deal["id"], sales.rep(rep))
        return opp if opp["flagged"] else None

    opp = await eventually(flagged, what="commitment flag recorded")
    (recorded,) = opp["commitment_flags"]
    assert recorded["flag_id"] == flag.flag_id
    assert recorded["commitment_id"] == promised
    assert recorded["commitment_known"] is True
    assert recorded["reason"] == "The custom export is not on the roadmap"
    assert recorded["flagged_by"] == "carla"
    assert [c["flagged"] for c in opp["commitments"]] == [True, False]
    r = await sales.client.get("/opportunities", params={"flagged": "true"}, headers=sales.rep(rep))
    assert [o["id"] for o in r.json()["items"]] == [deal["id"]]

    # The same flag re-sent (new event id) is recorded once.
    again = envelope_for(flag, source="service-desk", correlation_id="journey-x")
    await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, again)

    async def processed() -> bool:
        return await sales.runtime.db[PROCESSED].count_documents({"_id": str(again.event_id)}) == 1

    await eventually(processed, what="second flag delivery processed")
    assert len((await sales.opportunity(deal["id"]))["commitment_flags"]) == 1


async def test_a_flag_for_an_unknown_deal_is_dead_lettered(sales: Sales, kafka_bootstrap: str) -> None:
    reader = await TopicReader(kafka_bootstrap, dead_letter_topic("sales")).start()
    try:
        flag = CommitmentFlaggedV1(
            flag_id=sales.uid("flag"),
            account_id="acct-9",
            deal_id=sales.uid("no-such-deal"),
            commitment_id="c-1",
            reason="Never promised by us",
            flagged_by="carla",
        )
        env = envelope_for(flag, source="service-desk", correlation_id="journey-y")
        await produce_envelope(kafka_bootstrap, ACCOUNT_SIGNAL, env)

        def dead(_: list[Any]) -> dict[str, bytes] | None:
            for rec in reader.records:
                h = dict(rec.headers or ())
                if (
                    h.get("event_id") == str(env.event_id).encode()
                    and h.get("dlq_consumer_group") == sales.settings.group_id.encode()
                ):
                    return h
            return None

        h = await reader.wait_for(dead, what="unknown_deal dead letter")
        assert h["dlq_reason"] == b"unknown_deal"
        assert flag.deal_id.encode() in h["dlq_error"]
    finally:
        await reader.stop()
