"""What a lead-qualified handoff costs sales in database reads (issue 12), counted with
MongoDB's profiler on this module's own database: no timing, the operations themselves.

Before: each handoff read the lead's inbox items three times (newest, pending, count),
the rep roster and the SLA. Now the lead's items are read once, and the roster and the
SLA come from the process's configuration cache (crm_platform.cache) until a change.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pytest
from crm_platform.settings import ServiceSettings
from sales import store as repo

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales


@pytest.fixture(scope="module")
def sales_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings
    from sales.settings import SalesSettings

    settings = isolated_settings(SalesSettings, "sales", kafka_bootstrap, mongodb_uri)
    # Long enough that a loaded machine cannot expire the cache between two handoffs.
    return settings.model_copy(update={"config_cache_seconds": 3600.0})


async def reads_during(sales: Sales, lead_id: str | None = None) -> dict[str, int]:
    """Queue a handoff and count the transaction's reads per collection (the profiler's view)."""
    db = sales.runtime.db
    await db.command({"profile": 2})
    try:
        item, _ = await sales.qualify(lead_id)
    finally:
        await db.command({"profile": 0})
    names = {repo.INBOX, repo.REPS, repo.CONFIG}
    counts = dict.fromkeys(sorted(names), 0)
    # Reads inside a transaction (the consumer's; the test's polling reads are not in one).
    async for op in db["system.profile"].find({"op": "query", "command.txnNumber": {"$exists": True}}):
        collection = op["ns"].split(".", 1)[1]
        if collection in names and _about(op["command"].get("filter", {}).get("lead_id"), item["lead_id"]):
            counts[collection] += 1
    await db["system.profile"].drop()
    return counts


def _about(lead_filter: Any, lead_id: str) -> bool:
    """A read of no lead in particular, of this lead, or of a batch's leads that include it."""
    if isinstance(lead_filter, dict):
        return lead_id in lead_filter.get("$in", ())
    return lead_filter in (None, lead_id)


async def test_a_handoff_reads_the_leads_items_once_and_the_team_configuration_from_the_cache(
    sales: Sales,
) -> None:
    await sales.set_roster(ann=True, bob=True)
    first = await reads_during(sales)
    assert first == {repo.CONFIG: 1, repo.INBOX: 1, repo.REPS: 1}  # the cache was just dropped
    second = await reads_during(sales)
    assert second == {repo.CONFIG: 0, repo.INBOX: 1, repo.REPS: 0}


async def test_a_roster_change_reaches_the_next_handoff_at_once(sales: Sales) -> None:
    await sales.set_roster(carl=True)
    await reads_during(sales)  # cached: only carl is active
    await sales.set_roster(dana=True)  # this replica's change drops the cache
    item, _ = await sales.qualify()
    assert item["owner"] == "dana"


async def test_a_lone_handoffs_receipt_and_assignment_share_one_outbox_row(sales: Sales) -> None:
    """A handoff stored alone (not in a group) writes its assignment and its receipt as ONE
    outbox row, as a group does: one insert, relay mark and audit mark instead of two
    (docs/performance.md, fifteenth session, sales). Consumers still get one record each."""
    from crm_platform.mongo import OUTBOX, row_items

    await sales.set_roster(ann=True)
    item, env = await sales.qualify()
    mine = {
        "$or": [
            {"envelope.correlation_id": env.correlation_id},
            {"events.envelope.correlation_id": env.correlation_id},
        ]
    }
    rows = await sales.runtime.db[OUTBOX].find(mine).to_list()
    assert len(rows) == 1, [r["event_type"] for r in rows]
    assert [i["event_type"] for i in row_items(rows[0])] == ["sales.lead_assigned", "handoff.received"]
    assert item["owner"] == "ann"
