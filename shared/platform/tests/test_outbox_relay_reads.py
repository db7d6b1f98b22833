"""How often the outbox relay reads the pending rows to publish one commit (thirteenth session,
latency): once. It read them three times for a single handoff: the read that found the rows,
a second right after publishing them (finding none), and a third when the outbox's change
stream reported the insert its own process had committed (and had woken it for already).
Each read is a round trip on the service's loop and a query for mongod at 25 handoffs/s.

Against the real mongod and broker; the reads are counted, nothing is timed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.leads import LeadStatusChangedV1
from crm_platform.mongo import OUTBOX, CommittedRows, Store, Tx, connect, outbox_doc
from crm_platform.outbox import OutboxRelay
from crm_platform.testing import eventually

pytestmark = pytest.mark.integration


def status_changed() -> LeadStatusChangedV1:
    lead_id = f"lead-{uuid.uuid4().hex[:8]}"
    return LeadStatusChangedV1(lead_id=lead_id, status="nurturing", source_channel="web")


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    client = connect(mongodb_uri, "relay-reads-test")
    store = Store(client, f"t_relay_{uuid.uuid4().hex[:8]}", "leads")
    await store.ensure_platform_indexes()
    try:
        yield store
    finally:
        await client.drop_database(store.db.name)
        await client.close()


async def published(store: Store, row_id: Any) -> bool:
    row = await store.db[OUTBOX].find_one({"_id": row_id}, {"published": 1})
    return bool(row and row["published"])


async def inserted_by_another_replica(store: Store) -> Any:
    """A pending row as another replica's transaction stores it (no wake-up in this process)."""
    doc = outbox_doc(envelope_for(status_changed(), source="leads", correlation_id="other-replica"))
    return (await store.db[OUTBOX].insert_one(doc)).inserted_id


async def test_a_commit_is_published_after_one_read_of_the_pending_rows(
    store: Store, kafka_bootstrap: str
) -> None:
    relay = OutboxRelay(
        store.db, bootstrap=kafka_bootstrap, service="relay-reads-test", poll_seconds=3600,
        committed=store.committed_rows,
    )  # fmt: skip
    store.on_commit(relay.notify)
    reads: list[int] = []
    read_pending = relay._pending_rows

    async def counted() -> list[dict[str, Any]]:
        reads.append(1)
        return await read_pending()

    relay._pending_rows = counted  # type: ignore[method-assign]
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(relay.watch_inserts())]
    try:
        # The change stream is open once another replica's row wakes the relay.
        first = await inserted_by_another_replica(store)
        await eventually(lambda: published(store, first), what="a row woken by the change stream published")
        reads.clear()

        async def work(tx: Tx) -> None:
            tx.emit(status_changed())

        await store.transaction(work)  # wakes its own relay once committed
        # A row stored after it: its insert is reported after the commit's by the stream.
        last = await inserted_by_another_replica(store)
        await eventually(lambda: published(store, last), what="the next row published")
        assert len(reads) == 2, "one read for the commit, one for the row stored after it"
    finally:
        await relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


def test_an_insert_is_this_processs_once_and_only_if_it_committed() -> None:
    rows = CommittedRows(ids_limit=2)
    rows.add([{"_id": 1}, {"_id": 2}, {"_id": 3}])  # the oldest past the limit forgotten
    rows.discard([{"_id": 3}])  # an attempt that did not commit
    assert [rows.woken_here(i) for i in (1, 2, 3, 2)] == [False, True, False, False]
