"""A batch of handoffs that sales' consumer stores in ONE transaction (group commit) names,
in the audit log, the handoff that caused each change: not ``system:sales`` (the
transaction's context is taken before any event's). On the real broker and mongod: the
handoffs are produced as one record batch, so the running service fetches and stores them
together; erasure still rewrites their entries, and the audit API reads one entry per record.
The entry names the new items without copying them (``audit.inserts_named``): each reads back
with its values as inserted.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_contracts import envelope_for
from crm_contracts.topics import LEAD_QUALIFIED
from crm_platform import audit
from crm_platform.testing import (
    eventually,
    histories_name_their_events,
    named_by_events_only,
    produce_together,
    request_erasure,
    transaction_of,
)
from sales import store as repo

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales


async def test_each_inbox_item_of_a_grouped_batch_names_its_own_handoff(
    sales: Sales, make_qualified: Any
) -> None:
    await sales.set_roster(**dict.fromkeys([sales.uid("ga"), sales.uid("gb")], True))
    leads = [sales.uid("grouped") for _ in range(6)]
    envs = [
        envelope_for(make_qualified(lead), source="leads", correlation_id=f"journey-{lead}") for lead in leads
    ]
    await produce_together(sales.settings.kafka_bootstrap_servers, LEAD_QUALIFIED, envs)

    async def stored() -> list[Any] | None:
        items = [await sales.inbox_item(lead) for lead in leads]
        return items if all(items) else None

    items = await eventually(stored, what="the batch's inbox items")
    assert [i["id"] for i in items] == [str(e.event_id) for e in envs]
    db = sales.runtime.db
    causes = {str(e.event_id): e for e in envs}
    histories = await histories_name_their_events(db, repo.INBOX, causes)
    assert len({transaction_of(h[0]) for h in histories.values()}) == 1, "one grouped transaction"
    written = await db[audit.AUDIT_LOG].find({"record.id": {"$in": list(causes)}}).to_list()
    assert len(written) == 1, "the batch's new items: one stored entry, each record with its own cause"
    assert [r["id"] for r in written[0]["records"]] == list(causes)
    assert all("after" not in r for r in written[0]["records"]), "each item named, its handoff not copied"
    assert f"{leads[1]}@example.com" not in str(written)
    await named_by_events_only(db, transaction_of(written[0]))  # nothing named system:sales

    r = await sales.client.get(
        "/audit", params={"record_type": repo.INBOX, "record_id": items[2]["id"]},
        headers=sales.headers_of(["auditor"]),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    [shown] = r.json()["items"]
    assert (shown["actor"]["event_id"], shown["correlation_id"]) == (items[2]["id"], f"journey-{leads[2]}")

    erased = await request_erasure(sales.settings.kafka_bootstrap_servers, f"{leads[0]}@example.com")

    async def rewritten() -> list[Any] | None:
        entries = (await audit.history(db, repo.INBOX, items[0]["id"], limit=10)).items
        return entries if len(entries) == 2 else None

    erasure, insert = await eventually(rewritten, what="the erasure's entry")
    assert erasure["actor"]["event_id"] == str(erased.event_id)
    assert f"{leads[0]}@example.com" not in str(insert), "the erased person's values are gone"
    assert insert["actor"]["event_id"] == items[0]["id"], "who and why are kept"
    [kept] = (await audit.history(db, repo.INBOX, items[1]["id"], limit=10)).items
    assert f"{leads[1]}@example.com" in str(kept), "the others' entries are untouched"
    inserted = {c["field"]: c["after"] for c in kept["changes"]}
    assert inserted["handoff"]["contact"]["email"] == f"{leads[1]}@example.com", "read back from the item"
    assert (inserted["lead_id"], inserted["status"]) == (leads[1], "pending")
