"""Permissions an administrator configures (issue 9), on the real broker and mongod.

The gateway (its database, its outbox relay), leads and sales run in this process with
databases and consumer groups of their own. An administrator takes a permission from a
role at the gateway: the gateway refuses the role at once, the change is in the gateway's
audit log, and each department, once the ``permissions.changed`` event has reached its
consumer, refuses a direct call with a perfectly valid token too. A grant travels the same
way. Bad copies of the event are dead-lettered with a reason.

The broker is shared with the other suites' departments (the end-to-end platform's processes
consume ``crm.gateway.permissions`` too), so the fixture numbers this gateway's policy above any
earlier one (its version starts at the current epoch millisecond) and puts every role it
changed back to its defaults afterwards: the others end on the defaults, at a newer version.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.governance import PermissionsChangedV1
from crm_contracts.topics import GATEWAY_PERMISSIONS, dead_letter_topic
from crm_platform.mongo import connect
from crm_platform.permission_policy import COLLECTION, event_of_policy, policy_doc
from crm_platform.permissions import DEFAULT_POLICY, Policy
from crm_platform.testing import (
    TopicReader,
    auth_headers,
    eventually,
    isolated_settings,
    produce,
    produce_envelope,
    running_app,
    start_group_at_end,
)
from gateway.main import create_app as gateway_app
from gateway.settings import GatewaySettings
from gateway.upstream import Upstreams
from leads.main import create_app as leads_app
from leads.settings import LeadsSettings
from sales.main import create_app as sales_app
from sales.settings import SalesSettings

pytestmark = [pytest.mark.integration]

ADMIN = auth_headers(["admin"], "perm-admin")
ANALYST = auth_headers(["analyst"], "perm-analyst")
MARKETING = auth_headers(["marketing"], "perm-marketing")
REP = auth_headers(["sales_rep"], "perm-rep")


@dataclass
class Apps:
    gateway: httpx.AsyncClient
    leads: httpx.AsyncClient
    sales: httpx.AsyncClient
    forwarded: list[str]
    bootstrap: str
    leads_group: str


class _Body(httpx.AsyncByteStream):
    """A response body still to be streamed, as from a real upstream (the gateway streams it)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'


def _upstreams(urls: dict[str, str], forwarded: list[str]) -> Upstreams:
    def answer(request: httpx.Request) -> httpx.Response:
        forwarded.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=_Body())

    return Upstreams(urls, transport=httpx.MockTransport(answer))


@pytest.fixture
async def apps(kafka_bootstrap: str, mongodb_uri: str) -> AsyncIterator[Apps]:
    gw_settings = isolated_settings(GatewaySettings, "gateway", kafka_bootstrap, mongodb_uri)
    gw_settings.outbox_poll_seconds = 0.1
    gateway = gateway_app(gw_settings)
    forwarded: list[str] = []
    gateway.state.upstreams = _upstreams(gw_settings.upstreams, forwarded)
    leads_settings = isolated_settings(LeadsSettings, "leads", kafka_bootstrap, mongodb_uri)
    sales_settings = isolated_settings(SalesSettings, "sales", kafka_bootstrap, mongodb_uri)
    for s in (leads_settings, sales_settings):
        await start_group_at_end(kafka_bootstrap, s.group_id, [GATEWAY_PERMISSIONS])
    await _number_above_earlier_policies(gw_settings)
    async with AsyncExitStack() as stack:
        gw, leads, sales = [
            await stack.enter_async_context(running_app(app))
            for app in (gateway, leads_app(leads_settings), sales_app(sales_settings))
        ]
        yield Apps(gw, leads, sales, forwarded, kafka_bootstrap, leads_settings.group_id)
        for role in CHANGED_ROLES:
            body = {"permissions": sorted(DEFAULT_POLICY.holds(role))}
            r = await gw.put(f"/permissions/roles/{role}", headers=ADMIN, json=body)
            assert r.status_code == 200, r.text


CHANGED_ROLES = ("analyst", "sales_rep")


async def _number_above_earlier_policies(settings: GatewaySettings) -> None:
    client = connect(settings.mongodb_uri, "permission-test-seed", timeout_seconds=5)
    try:
        seeded = Policy(int(time.time() * 1000), DEFAULT_POLICY.grants)
        await client[settings.database_name][COLLECTION].insert_one(policy_doc(seeded))
    finally:
        await client.close()


def _without(role: str, permission: str) -> list[str]:
    held = DEFAULT_POLICY.holds(role)
    assert permission in held, f"{role} holds {permission} by default"
    return sorted(held - {permission})


async def _status(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> int:
    return (await client.get(path, headers=headers)).status_code


async def test_a_revoked_permission_is_refused_by_the_gateway_and_then_by_the_service(apps: Apps) -> None:
    assert await _status(apps.leads, "/leads", ANALYST) == 200  # the default: analysts read leads
    assert await _status(apps.gateway, "/api/leads/leads", ANALYST) == 200
    assert apps.forwarded == ["GET /leads"]
    reader = await TopicReader(apps.bootstrap, GATEWAY_PERMISSIONS).start()
    try:
        body = {"permissions": _without("analyst", "leads.leads.read")}
        r = await apps.gateway.put("/permissions/roles/analyst", headers=ADMIN, json=body)
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert version > 1  # numbered above every earlier policy on this broker (see the fixture)
        assert "leads.leads.read" not in r.json()["roles"]["analyst"]

        # The gateway refuses at once, naming the permission; nothing reaches leads.
        refused = await apps.gateway.get("/api/leads/leads", headers=ANALYST)
        assert refused.status_code == 403
        assert "leads.leads.read" in refused.text
        assert apps.forwarded == ["GET /leads"]

        # The change is published once, as the full policy with its version.
        def the_change(_: list[Any]) -> Any:
            found = [
                e
                for e in reader.envelopes(PermissionsChangedV1.event_type)
                if e.payload["policy_version"] == version
            ]
            return found[0] if found else None

        published = await reader.wait_for(the_change, what="the permissions.changed event")
        assert published.source == "gateway"
        grants = {g["role"]: g["permissions"] for g in published.payload["grants"]}
        assert "leads.leads.read" not in grants["analyst"]
        assert "leads.leads.read" in grants["marketing"]
    finally:
        await reader.stop()

    # The department refuses a direct call with a valid token once its consumer applied it.
    async def leads_refuses() -> bool:
        return await _status(apps.leads, "/leads", ANALYST) == 403

    await eventually(leads_refuses, timeout=30, what="leads applies the revoked permission")
    assert await _status(apps.leads, "/leads", MARKETING) == 200  # other roles keep it

    # Audited at the gateway: who changed what, before and after.
    audit = await apps.gateway.get(
        "/audit", headers=ADMIN, params={"record_type": "permission_policy", "user_id": "user-perm-admin"}
    )
    assert audit.status_code == 200, audit.text
    (entry,) = audit.json()["items"]
    assert entry["operation"] == "PUT /permissions/roles/{role}"
    assert entry["actor"]["user_id"] == "user-perm-admin"
    changes = {c["field"]: c for c in entry["changes"]}
    assert changes["version"]["after"] == version
    assert "leads.leads.read" not in changes["grants"]["after"]["analyst"]
    assert "leads.leads.read" in changes["grants"]["after"]["marketing"]


async def test_a_granted_permission_opens_the_route_in_the_gateway_and_the_service(apps: Apps) -> None:
    # sales reps do not export marketing's lead list by default; an administrator grants it.
    assert await _status(apps.leads, "/leads/export", REP) == 403
    assert await _status(apps.gateway, "/api/leads/leads/export", REP) == 403
    held = sorted(DEFAULT_POLICY.holds("sales_rep") | {"leads.leads.export"})
    r = await apps.gateway.put("/permissions/roles/sales_rep", headers=ADMIN, json={"permissions": held})
    assert r.status_code == 200, r.text
    assert await _status(apps.gateway, "/api/leads/leads/export", REP) == 200

    async def leads_serves() -> bool:
        return await _status(apps.leads, "/leads/export", REP) == 200

    await eventually(leads_serves, timeout=30, what="leads applies the granted permission")


async def test_bad_policy_events_are_dead_lettered_with_a_reason_and_change_nothing(apps: Apps) -> None:
    run = uuid.uuid4().hex[:8]
    dlq = await TopicReader(apps.bootstrap, dead_letter_topic("leads")).start()
    try:
        # Not the gateway's: a department cannot change permissions by publishing the event.
        forged = event_of_policy(
            DEFAULT_POLICY.with_role("sales_rep", []), changed_by=run, changed_role="sales_rep", at=utcnow()
        )
        await produce_envelope(
            apps.bootstrap, GATEWAY_PERMISSIONS, envelope_for(forged, source="sales", correlation_id=run)
        )
        # The gateway's, but not a policy.
        bad = envelope_for(forged, source="gateway", correlation_id=run).model_dump(mode="json")
        bad["payload"]["grants"] = "everything"
        await produce(apps.bootstrap, GATEWAY_PERMISSIONS, json.dumps(bad).encode(), key=b"role-permissions")

        def mine(records: list[Any]) -> list[str] | None:
            reasons = sorted(
                dict(r.headers)["dlq_reason"].decode()
                for r in records
                if run.encode() in (r.value or b"")  # other suites' dead letters share the topic
                and dict(r.headers).get("dlq_consumer_group") == apps.leads_group.encode()
            )
            return reasons if len(reasons) == 2 else None

        assert await dlq.wait_for(mine, timeout=30, what="both dead letters") == [
            "schema_invalid",
            "wrong_source",
        ]
    finally:
        await dlq.stop()
    # Neither changed what leads enforces: reps still read leads.
    assert await _status(apps.leads, "/leads", REP) == 200
