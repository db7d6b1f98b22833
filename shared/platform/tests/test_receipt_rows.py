"""A consumer's batch row holds its handoffs' receipts without an index entry per receipt: each
received handoff's ledger entry names the row (``receipts.RECEIPT_ROW`` = the row's ``ROW_KEY``),
and a re-sent copy's receipt is found again through it (``receipts.confirm_again``)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from crm_contracts import Envelope, envelope_for, utcnow
from crm_contracts.events.sales import LeadAssignedV1
from crm_contracts.topics import LEAD_QUALIFIED
from crm_platform import receipts
from crm_platform.consumer import ConsumerConfig, EventConsumer, _Ready
from crm_platform.mongo import BATCH_EVENTS, OUTBOX, PROCESSED, ROW_KEY, Store, Tx, connect
from crm_platform.testing import lead_qualified

pytestmark = pytest.mark.integration

TP = TopicPartition(LEAD_QUALIFIED, 0)


def _handoff(lead_id: str) -> Envelope:
    return envelope_for(lead_qualified(lead_id), source="leads", correlation_id=lead_id)


def _record(env: Envelope, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = env.model_dump_json().encode()
    return ConsumerRecord(LEAD_QUALIFIED, 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


async def _assign(tx: Tx, event: Any, envelope: Envelope) -> None:
    """Sales' handler in short: one assignment per handoff (the receipt joins it in the row)."""
    tx.emit(
        LeadAssignedV1(lead_id=event.lead_id, owner="rep1", response_due_at=utcnow() + timedelta(hours=1))
    )


async def _receipts_of(store: Store, handoffs: list[Envelope]) -> dict[str, dict[str, Any]]:
    wanted = {str(env.event_id) for env in handoffs}
    return {
        item["envelope"]["payload"]["handoff_event_id"]: {**item, "row": row}
        async for row in store.db[OUTBOX].find({BATCH_EVENTS: {"$exists": True}})
        for item in row[BATCH_EVENTS]
        if item["event_type"] == receipts.RECEIPT_EVENT
        and item["envelope"]["payload"]["handoff_event_id"] in wanted
    }


async def test_a_batch_rows_receipts_take_no_index_entry_and_a_copys_receipt_is_found_by_the_ledger(
    mongodb_uri: str,
) -> None:
    client = connect(mongodb_uri, "receipt-rows-test")
    store = Store(client, f"t_receipt_rows_{uuid.uuid4().hex[:8]}", "sales")
    try:
        # An earlier version's index over every receipt in every batch row: retired at start-up.
        retired = f"{BATCH_EVENTS}.envelope.payload.handoff_event_id"
        await store.db[OUTBOX].create_index(retired, name="receipt_in_batch", sparse=True)
        await store.ensure_platform_indexes()
        await receipts.ensure_indexes(store.db)
        indexes = await store.db[OUTBOX].index_information()
        assert "receipt_in_batch" not in indexes, "retired at start-up"
        assert "receipt_rows" in indexes

        consumer = EventConsumer(
            ConsumerConfig(service="sales", group_id="sales", topics=[LEAD_QUALIFIED], bootstrap="-",
                           department="sales"),
            store,
            {"lead.qualified": _assign},
        )  # fmt: skip
        handoffs = [_handoff(f"row-{uuid.uuid4().hex[:8]}") for _ in range(20)]
        ready = [consumer._prepare(_record(env, n)) for n, env in enumerate(handoffs)]
        assert all(isinstance(r, _Ready) for r in ready)
        await store.db.command("profile", 2)
        assert await consumer._store_run(TP, [r for r in ready if isinstance(r, _Ready)], {})
        await store.db.command("profile", 0)

        profiled = {"op": "insert", "ns": f"{store.db.name}.{OUTBOX}"}
        [insert] = await store.db["system.profile"].find(profiled).to_list()
        assert insert["keysInserted"] <= len(indexes), (
            "one index entry per index at most for the row, not one per receipt it holds"
        )  # 20 + 6 with receipt_in_batch
        stored = await _receipts_of(store, handoffs)
        assert set(stored) == {str(env.event_id) for env in handoffs}, "every receipt in the batch row"
        [row_key] = {item["row"][ROW_KEY] for item in stored.values()}
        ledger = await store.db[PROCESSED].find({"_id": {"$in": list(stored)}}).to_list()
        assert {entry[receipts.RECEIPT_ROW] for entry in ledger} == {row_key}, "each entry names the row"
        assert len(ledger) == len(handoffs)

        # The relay published the row; a copy of the sixth handoff arrives: its receipt goes out
        # again alone, the same receipt event, and the batch row is not published again.
        await store.db[OUTBOX].update_many({ROW_KEY: row_key}, {"$set": {"published": True}})
        copy = handoffs[5]
        assert await receipts.confirm_again(store, copy) == "republished"
        alone = await store.db[OUTBOX].find_one(
            {"event_type": receipts.RECEIPT_EVENT, "envelope.payload.handoff_event_id": str(copy.event_id)}
        )
        assert alone is not None
        assert alone["published"] is False
        original = stored[str(copy.event_id)]["event_id"]
        assert alone["event_id"] == original, "the stored receipt, not a new one"
        assert await receipts.confirm_again(store, copy) == "pending", "put back once"
        assert await store.db[OUTBOX].count_documents({ROW_KEY: row_key, "published": True}) == 1

        # A ledger entry of an earlier version names no row: a new receipt, as for an expired row.
        earlier = handoffs[6]
        unnamed = {"$unset": {receipts.RECEIPT_ROW: ""}}
        await store.db[PROCESSED].update_one({"_id": str(earlier.event_id)}, unnamed)
        assert await receipts.confirm_again(store, earlier) == "emitted"
    finally:
        await client.drop_database(store.db.name)
        await client.close()
