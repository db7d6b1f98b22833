"""With the sales service stopped, leads still qualify; when sales returns, every
handoff is delivered exactly once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_platform.devinfra.journey import Gateway, capture_and_qualify, until
from crm_platform.devinfra.launcher import Platform

pytestmark = pytest.mark.e2e
LEADS = 5


def test_leads_qualify_while_sales_is_down_and_arrive_once_when_it_returns(
    platform: Platform, gw: Gateway
) -> None:
    platform.stop(("sales",))
    try:
        channel = f"outage-{uuid.uuid4().hex[:6]}"
        lead_ids = [capture_and_qualify(gw, channel, "outage", f"Outage Lead{i}") for i in range(LEADS)]
        for lead_id in lead_ids:
            assert gw.get("maria", f"/api/leads/leads/{lead_id}")["status"] == "qualified"
        # The gateway reports the department as unavailable rather than failing oddly.
        down = gw.http.get("/api/sales/inbox", headers={"Authorization": f"Bearer {gw.tokens['sam']}"})
        assert down.status_code == 503
    finally:
        platform.start(("sales",))
        platform.wait_ready(timeout=60, names=("sales",))

    def all_arrived() -> list[dict[str, Any]] | None:
        page = gw.get("sam", "/api/sales/inbox?limit=200")
        mine = [i for i in page["items"] if i["lead_id"] in lead_ids]
        return mine if len(mine) >= LEADS else None

    items = until(all_arrived, timeout=60, what="every qualified lead in the sales inbox")
    assert sorted(i["lead_id"] for i in items) == sorted(lead_ids), "each lead exactly once"
    assert all(i["owner"] in (gw.user_ids["rita"], gw.user_ids["rob"]) for i in items)
