"""Voice of the customer: action items raised at the service desk, over a real broker and mongod.

Items for sales and marketing leave as handoffs (``action_item.raised_for_*``) and their
outcomes come back from those departments' topics; customer success' own items go
into its own queue (the shared ``crm_platform.action_items``). Either way the
customer's record shows what became of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from crm_contracts import Envelope, envelope_for, topics, utcnow
from crm_contracts.access import CONSUMES
from crm_contracts.events.action_items import ActionItemUpdatedBySalesV1
from crm_contracts.events.sales import DealWonV1
from crm_platform.clock import ManualClock
from crm_platform.mongo import HANDOFFS_SENT
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    eventually,
    produce_envelope,
    running_app,
    start_group_at_end,
    token_for,
)
from fastapi import FastAPI
from service_desk.main import create_app

pytestmark = pytest.mark.integration


def headers_for(role: str, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for([role], user_id, user_id=user_id)}"}


REP = headers_for("service_rep", "rita.rep")
LEAD = headers_for("service_lead", "lena.lead")
CSM_OTHER = headers_for("customer_success_manager", "otto.csm")


class Desk:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, clock: ManualClock, bootstrap: str) -> None:
        self.app, self.client, self.clock, self.bootstrap = app, client, clock, bootstrap
        self.items = TopicReader(bootstrap, topics.ACTION_ITEMS)
        self.receipts = TopicReader(bootstrap, topics.HANDOFF_RECEIPTS)

    async def win(self, deal: DealWonV1) -> dict[str, Any]:
        env = envelope_for(deal, source="sales", correlation_id=f"journey-{deal.deal_id}")
        await produce_envelope(self.bootstrap, topics.DEAL_WON, env)

        async def check() -> dict[str, Any] | None:
            r = await self.client.get("/accounts", params={"deal_id": deal.deal_id}, headers=REP)
            items = r.json()["items"]
            return items[0] if items else None

        return await eventually(check, what=f"account for deal {deal.deal_id}")

    async def raise_item(self, account_id: str, department: str, **fields: Any) -> httpx.Response:
        body = {
            "department": department,
            "title": "Follow up on the missing SAP export",
            "due_at": (self.clock.now + timedelta(days=7)).isoformat(),
            "account_id": account_id,
            "source": {"kind": "survey", "record_id": "srv-1", "excerpt": "Still no export"},
            **fields,
        }
        return await self.client.post("/action-items", json=body, headers=REP)

    async def account_items(self, account_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/accounts/{account_id}/action-items", headers=REP)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    async def emitted(self, reader: TopicReader, event_type: str, **match: Any) -> Envelope:
        def find(_: list[Any]) -> Envelope | None:
            for env in reader.envelopes(event_type):
                if all(env.payload.get(k) == v for k, v in match.items()):
                    return env
            return None

        return await reader.wait_for(find, what=f"{event_type} {match}")


@pytest.fixture(scope="module")
async def desk(desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str) -> AsyncIterator[Desk]:
    clock = ManualClock(utcnow())
    settings = desk_settings(CRM_ACTION_ITEM_ESCALATION_SECONDS=3600)
    await start_group_at_end(kafka_bootstrap, settings.group_id, list(CONSUMES["service-desk"]))
    app = create_app(settings, clock=clock)
    async with running_app(app) as client:
        d = Desk(app, client, clock, kafka_bootstrap)
        await d.items.start()
        await d.receipts.start()
        try:
            yield d
        finally:
            await d.items.stop()
            await d.receipts.stop()


def sales_step(item: dict[str, Any], status: str, at: datetime, **fields: Any) -> Envelope:
    event = ActionItemUpdatedBySalesV1(
        item_id=item["item_id"],
        department="sales",
        account_id=item["account_id"],
        status=status,
        acted_by="sam.sales",
        raised_at=item["raised_at"],
        due_at=item["due_at"],
        acted_at=at,
        **fields,
    )
    return envelope_for(event, source="sales", correlation_id="journey", occurred_at=at)


async def test_an_item_for_sales_is_handed_off_and_its_outcome_shows_on_the_account(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    r = await desk.raise_item(account["account_id"], "sales", owner="sam.sales")
    assert r.status_code == 201, r.text
    item = r.json()
    assert (item["status"], item["department"], item["assignee"]) == ("open", "sales", "sam.sales")

    raised = await desk.emitted(desk.items, "action_item.raised_for_sales", item_id=item["item_id"])
    assert raised.source == "service-desk"
    assert raised.correlation_id == f"journey-{account['deal_id']}"
    assert raised.payload["source"] == {"kind": "survey", "record_id": "srv-1", "excerpt": "Still no export"}
    assert raised.payload["raised_by"] == "rita.rep"
    records = desk.app.state.runtime.db[HANDOFFS_SENT]  # written by the relay as it publishes
    sent = await eventually(lambda: records.find_one({"_id": str(raised.event_id)}), what="its record")
    assert sent["handoff"] == "action-item-to-sales"  # tracked until sales' receipt comes back

    now = utcnow()
    done = sales_step(item, "done", now, assignee="sam.sales", reason="export shipped")
    late_accept = sales_step(item, "accepted", now - timedelta(minutes=5))  # a re-sent older step
    await produce_envelope(desk.bootstrap, topics.SALES_ACTION_ITEM_UPDATES, done)
    await desk.emitted(desk.receipts, "handoff.received", handoff_event_id=str(done.event_id))
    await produce_envelope(desk.bootstrap, topics.SALES_ACTION_ITEM_UPDATES, late_accept)
    await desk.emitted(desk.receipts, "handoff.received", handoff_event_id=str(late_accept.event_id))

    [shown] = [i for i in await desk.account_items(account["account_id"]) if i["item_id"] == item["item_id"]]
    assert shown["status"] == "done"  # the older step joined the history, not the status
    assert [s["status"] for s in shown["history"]] == ["accepted", "done"]
    assert shown["reason"] == "export shipped"
    assert shown["closed_at"] is not None


async def test_customer_success_works_its_own_items_in_its_own_queue(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    r = await desk.raise_item(account["account_id"], "customer-success", title="Train the new admins")
    assert r.status_code == 201, r.text
    item_id = r.json()["item_id"]
    await desk.emitted(desk.items, "action_item.raised_for_customer_success", item_id=item_id)

    queue = (await desk.client.get("/action-queue", headers=REP)).json()
    assert item_id in [i["item_id"] for i in queue["items"]]
    refused = await desk.client.post(
        f"/action-queue/{item_id}/assign", json={"assignee": "rita.rep"}, headers=REP
    )
    assert refused.status_code == 403  # (re)assigning is the team lead's
    assigned = await desk.client.post(
        f"/action-queue/{item_id}/assign", json={"assignee": "rita.rep"}, headers=LEAD
    )
    assert assigned.status_code == 200, assigned.text
    mine = (await desk.client.get("/action-queue", params={"mine": "true"}, headers=REP)).json()
    assert [i["item_id"] for i in mine["items"]] == [item_id]
    done = await desk.client.post(f"/action-queue/{item_id}/complete", json={"note": "trained"}, headers=REP)
    assert done.status_code == 200, done.text
    step = await desk.emitted(
        desk.items, "action_item.updated_by_customer_success", item_id=item_id, status="done"
    )
    assert step.correlation_id == f"journey-{account['deal_id']}"  # the customer's journey continues

    [shown] = [i for i in await desk.account_items(account["account_id"]) if i["item_id"] == item_id]
    assert shown["status"] == "done"
    assert [s["status"] for s in shown["history"]] == ["assigned", "done"]
    closed = (await desk.client.get("/action-queue", params={"view": "closed"}, headers=LEAD)).json()
    assert item_id in [i["item_id"] for i in closed["items"]]


async def test_an_overdue_item_escalates_to_the_team_lead(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    due = desk.clock.now + timedelta(hours=2)
    r = await desk.raise_item(account["account_id"], "customer-success", due_at=due.isoformat())
    item_id = r.json()["item_id"]
    desk.clock.advance(hours=3)
    escalated = await desk.app.state.action_queue.escalate_overdue()
    assert item_id in [i.item_id for i in escalated]
    view = (await desk.client.get("/action-queue", params={"view": "escalated"}, headers=LEAD)).json()
    [listed] = [i for i in view["items"] if i["item_id"] == item_id]
    assert listed["escalated_to"] == "service_lead"
    assert listed["overdue"] is True
    [shown] = [i for i in await desk.account_items(account["account_id"]) if i["item_id"] == item_id]
    assert shown["escalated_to"] == "service_lead"
    assert shown["status"] == "open"


async def test_bad_input_is_refused_naming_the_field(desk: Desk, make_deal: Callable[..., DealWonV1]) -> None:
    account = await desk.win(make_deal())
    account_id = account["account_id"]

    missing = await desk.client.post("/action-items", json={"department": "sales"}, headers=REP)
    assert missing.status_code == 422
    assert {"body.title", "body.due_at", "body.account_id", "body.source"} <= {
        f["field"] for f in missing.json()["fields"]
    }
    wrong_department = await desk.raise_item(account_id, "legal")
    assert wrong_department.status_code == 422
    assert wrong_department.json()["fields"][0]["field"] == "body.department"
    past = await desk.raise_item(account_id, "sales", due_at=(desk.clock.now - timedelta(days=1)).isoformat())
    assert past.status_code == 422
    assert past.json()["details"] == {"field": "due_at"}
    unknown = await desk.raise_item("acct-nope", "sales")
    assert unknown.status_code == 404
    assert unknown.json()["details"] == {"field": "account_id"}
    foreign_ticket = await desk.raise_item(
        account_id, "sales", source={"kind": "ticket", "record_id": "tk-x"}
    )
    assert foreign_ticket.status_code == 422
    assert foreign_ticket.json()["details"] == {"field": "source.record_id"}

    r = await desk.raise_item(account_id, "customer-success")
    item_id = r.json()["item_id"]
    no_reason = await desk.client.post(f"/action-queue/{item_id}/decline", json={}, headers=REP)
    assert no_reason.status_code == 422
    assert no_reason.json()["fields"][0]["field"] == "body.reason"
    unknown_item = await desk.client.post("/action-queue/nope/accept", headers=REP)
    assert unknown_item.status_code == 404
    declined = await desk.client.post(f"/action-queue/{item_id}/decline", json={"reason": "dup"}, headers=REP)
    assert declined.status_code == 200
    again = await desk.client.post(f"/action-queue/{item_id}/accept", headers=REP)
    assert again.status_code == 409


async def test_a_csm_raises_only_for_their_own_accounts(
    desk: Desk, make_deal: Callable[..., DealWonV1]
) -> None:
    account = await desk.win(make_deal())
    body = {
        "department": "sales",
        "title": "x",
        "due_at": (desk.clock.now + timedelta(days=1)).isoformat(),
        "account_id": account["account_id"],
        "source": {"kind": "account_note", "record_id": "n-1"},
    }
    r = await desk.client.post("/action-items", json=body, headers=CSM_OTHER)
    assert r.status_code == 404
    listed = await desk.client.get(f"/accounts/{account['account_id']}/action-items", headers=CSM_OTHER)
    assert listed.status_code == 404
