"""The shared action-item queue inside a running department service (real broker and mongod).

A service posing as sales wires the queue exactly as sales and leads do: the consumer
stores ``action_item.raised_for_sales`` (and ignores other departments' items), the
receipt goes back, members work items over HTTP, each step is published as
``action_item.updated_by_sales``, and the escalation job escalates overdue items by itself.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from crm_contracts import Envelope, envelope_for, topics, utcnow
from crm_platform.action_items.api import action_queue_router
from crm_platform.action_items.handlers import ActionItemQueue, raised_handlers
from crm_platform.action_items.wiring import install
from crm_platform.app import create_app
from crm_platform.clock import DEMO_TIME_HEADER
from crm_platform.runtime import ServiceRuntime, Subscription
from crm_platform.settings import ServiceSettings
from crm_platform.testing import (
    TopicReader,
    action_item_raised,
    auth_headers,
    eventually,
    produce_envelope,
    running_app,
)
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

pytestmark = pytest.mark.integration

REP = auth_headers(["sales_rep"], "ria")
MANAGER = auth_headers(["sales_manager"], "mona")


class Dept:
    def __init__(self, client: httpx.AsyncClient, bootstrap: str) -> None:
        self.client, self.bootstrap = client, bootstrap
        self.updates = TopicReader(bootstrap, topics.SALES_ACTION_ITEM_UPDATES)
        self.receipts = TopicReader(bootstrap, topics.HANDOFF_RECEIPTS)

    async def hand_over(
        self, department: str = "sales", due: timedelta = timedelta(days=3), at: datetime | None = None
    ) -> Envelope:
        """Customer success raises an item now, or (``at``: the demo history) at that moment."""
        event = action_item_raised(department, due=due)
        if at is not None:
            event = event.model_copy(update={"raised_at": at, "due_at": at + due})
        item_id = event.item_id
        env = envelope_for(event, source="service-desk", correlation_id=f"journey-{item_id}", occurred_at=at)
        await produce_envelope(self.bootstrap, topics.ACTION_ITEMS, env)
        return env

    async def item(self, item_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            r = await self.client.get(f"/action-queue/{item_id}", headers=REP)
            return dict(r.json()) if r.status_code == 200 else None

        return await eventually(check, what=f"action item {item_id} in the queue")

    async def update(self, item_id: str, status: str) -> Envelope:
        def find(_: list[Any]) -> Envelope | None:
            for env in self.updates.envelopes("action_item.updated_by_sales"):
                if env.payload["item_id"] == item_id and env.payload["status"] == status:
                    return env
            return None

        return await self.updates.wait_for(find, what=f"{status} of {item_id}")


@contextlib.asynccontextmanager
async def running_dept(
    make_settings: Callable[..., ServiceSettings], kafka_bootstrap: str, **env: str
) -> AsyncIterator[Dept]:
    settings = make_settings(
        "sales",
        CRM_CONSUMER_GROUP=f"sales-queue-test-{uuid.uuid4().hex[:8]}",
        CRM_ACTION_ITEM_ESCALATION_SECONDS=0.2,
        **env,
    )
    # Skip what other suites left on the shared broker (e.g. the fuzz test's records).
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(topics.ACTION_ITEMS, p)
            for p in sorted(consumer.partitions_for_topic(topics.ACTION_ITEMS) or [])
        ]
        consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in consumer.end_offsets(tps).items()})
    finally:
        consumer.close()
    runtime = ServiceRuntime(
        settings,
        subscription=Subscription(
            topics=[topics.ACTION_ITEMS], handlers=raised_handlers("sales"), department="sales"
        ),
    )
    router = action_queue_router(
        members=["sales_rep", "sales_manager", "admin"],
        managers=["sales_manager", "admin"],
        department_label="Sales",
    )
    app = create_app(settings=settings, title="queue under test", runtime=runtime, protected=[router])
    install(app, runtime, ActionItemQueue(runtime.store, "sales", manager="sales_manager"))
    async with running_app(app) as client:
        d = Dept(client, kafka_bootstrap)
        await d.updates.start()
        await d.receipts.start()
        try:
            yield d
        finally:
            await d.updates.stop()
            await d.receipts.stop()


@pytest.fixture
async def dept(make_settings: Callable[..., ServiceSettings], kafka_bootstrap: str) -> AsyncIterator[Dept]:
    async with running_dept(make_settings, kafka_bootstrap) as d:
        yield d


@pytest.fixture
async def demo_dept(
    make_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[Dept]:
    """The same department started as ``make run`` starts it for the demo history."""
    async with running_dept(make_settings, kafka_bootstrap, CRM_DEMO_CLOCK="true") as d:
        yield d


async def test_a_handed_over_item_is_queued_receipted_worked_and_reported_back(dept: Dept) -> None:
    ignored = await dept.hand_over("marketing")  # marketing's item travels the same topic
    env = await dept.hand_over("sales")
    item_id = env.payload["item_id"]
    item = await dept.item(item_id)
    assert (item["status"], item["department"], item["overdue"]) == ("open", "sales", False)

    def receipt_for(event_id: str) -> Callable[[list[Any]], Envelope | None]:
        def find(_: list[Any]) -> Envelope | None:
            found = [
                e
                for e in dept.receipts.envelopes("handoff.received")
                if e.payload["handoff_event_id"] == event_id
            ]
            return found[0] if found else None

        return find

    receipt = await dept.receipts.wait_for(receipt_for(str(env.event_id)), what="receipt")
    assert (receipt.payload["handoff"], receipt.source) == ("action-item-to-sales", "sales")
    missing = await dept.client.get(f"/action-queue/{ignored.payload['item_id']}", headers=REP)
    assert missing.status_code == 404

    assert (await dept.client.post(f"/action-queue/{item_id}/accept", headers=REP)).status_code == 200
    rep_assigns = await dept.client.post(
        f"/action-queue/{item_id}/assign", json={"assignee": "rob"}, headers=REP
    )
    assert rep_assigns.status_code == 403
    assigned = await dept.client.post(
        f"/action-queue/{item_id}/assign", json={"assignee": "rob"}, headers=MANAGER
    )
    assert assigned.status_code == 200, assigned.text
    done = await dept.client.post(f"/action-queue/{item_id}/complete", json={"note": "called"}, headers=REP)
    assert done.json()["status"] == "done"

    accepted = await dept.update(item_id, "accepted")
    assert accepted.source == "sales"
    assert accepted.correlation_id == f"journey-{item_id}"  # the customer's journey continues
    assert (await dept.update(item_id, "assigned")).payload["assignee"] == "rob"
    assert (await dept.update(item_id, "done")).payload["acted_by"] == "user-ria"


async def test_an_overdue_item_is_escalated_by_the_service_itself(dept: Dept) -> None:
    env = await dept.hand_over("sales", due=timedelta(minutes=-5))
    item_id = env.payload["item_id"]

    async def escalated_here() -> dict[str, Any] | None:
        # Read this service's own queue: other sales processes on the shared broker (the
        # e2e platform's) consume the same topic and publish their own escalations.
        r = await dept.client.get("/action-queue", params={"view": "escalated"}, headers=MANAGER)
        found = [i for i in r.json()["items"] if i["item_id"] == item_id] if r.status_code == 200 else []
        return found[0] if found else None

    listed = await eventually(escalated_here, what=f"{item_id} escalated by the service's own job")
    assert (listed["escalated_to"], listed["status"], listed["overdue"]) == ("sales_manager", "open", True)
    assert [s["status"] for s in listed["history"]] == ["escalated"]
    assert listed["history"][0]["automatic"] is True
    escalated = await dept.update(item_id, "escalated")
    assert (escalated.payload["automatic"], escalated.payload["escalated_to"]) == (True, "sales_manager")
    overdue = (await dept.client.get("/action-queue", params={"view": "overdue"}, headers=REP)).json()
    assert item_id in [i["item_id"] for i in overdue["items"]]
    bad_view = await dept.client.get("/action-queue", params={"view": "late"}, headers=REP)
    assert bad_view.status_code == 422
    assert bad_view.json()["fields"][0]["field"] == "query.view"


async def test_an_item_of_the_demo_history_is_judged_on_its_own_clock_not_the_real_one(
    demo_dept: Dept,
) -> None:
    """The race ``make run`` had: the history raises an item "100 days ago" and closes it in its
    own past a second later; the escalation job, on the real time, found it overdue meanwhile
    and escalated it, a step newer than the history's (customer success kept "escalated")."""
    d = demo_dept
    raised_at = (utcnow() - timedelta(days=100)).replace(microsecond=0)
    due = raised_at + timedelta(days=7)
    early = (await d.hand_over("sales", due=timedelta(days=7), at=raised_at)).payload["item_id"]
    late = (await d.hand_over("sales", due=timedelta(days=7), at=raised_at)).payload["item_id"]
    for item_id in (early, late):
        await d.item(item_id)
    # A live item already overdue: once the job escalated it, it has judged the demo items too.
    control = (await d.hand_over("sales", due=timedelta(minutes=-5))).payload["item_id"]
    await d.update(control, "escalated")
    for item_id in (early, late):
        item = await d.item(item_id)
        assert (item["escalated_to"], item["history"]) == (None, []), "not overdue on its own clock"

    async def complete(item_id: str, at: datetime) -> None:
        headers = {**REP, DEMO_TIME_HEADER: at.isoformat()}
        r = await d.client.post(f"/action-queue/{item_id}/complete", json={"note": "called"}, headers=headers)
        assert r.status_code == 200, r.text

    await complete(early, raised_at + timedelta(days=3))  # in time: never escalated
    await complete(late, raised_at + timedelta(days=10))  # late: escalated at its due date first
    await d.update(early, "done")
    escalated, done = await d.update(late, "escalated"), await d.update(late, "done")
    assert (escalated.payload["automatic"], escalated.payload["escalated_to"]) == (True, "sales_manager")
    assert datetime.fromisoformat(escalated.payload["acted_at"]) == due
    assert escalated.occurred_at <= done.occurred_at == raised_at + timedelta(days=10)
    assert not [
        e
        for e in d.updates.envelopes()
        if e.payload.get("item_id") == early and e.payload["status"] != "done"
    ]
    history = [s["status"] for s in (await d.item(late))["history"]]
    assert history == ["escalated", "done"]
