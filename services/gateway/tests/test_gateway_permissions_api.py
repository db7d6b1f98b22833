"""``/permissions``: the role -> permission policy through the running gateway (real mongod).

Admins read and change it, auditors only read it, other roles neither; bad input is refused
naming the unknown role or permission; admin cannot lose what administers the policy; the
gateway enforces a change at once, for its own routes and for what it forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crm_platform.permissions import CATALOGUE, DEFAULT_POLICY
from crm_platform.testing import auth_headers

ADMIN = auth_headers(["admin"], "perm-admin")
AUDITOR = auth_headers(["auditor"], "perm-auditor")
ANALYST = auth_headers(["analyst"], "perm-analyst")


async def test_admins_and_auditors_read_the_policy_with_its_catalogue(gateway: Callable[..., Any]) -> None:
    async with gateway() as client:
        r = await client.get("/permissions", headers=AUDITOR)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == 0
        assert body["roles"]["analyst"] == sorted(DEFAULT_POLICY.holds("analyst"))
        assert {p["name"] for p in body["permissions"]} == set(CATALOGUE)
        export = next(p for p in body["permissions"] if p["name"] == "leads.leads.export")
        assert export["routes"] == ["GET, HEAD /leads/export"]
        assert (await client.get("/permissions", headers=ANALYST)).status_code == 403
        put = await client.put("/permissions/roles/analyst", headers=AUDITOR, json={"permissions": []})
        assert put.status_code == 403  # auditors read, never change


async def test_bad_changes_are_refused_naming_what_is_wrong(gateway: Callable[..., Any]) -> None:
    async with gateway() as client:
        r = await client.put("/permissions/roles/superuser", headers=ADMIN, json={"permissions": []})
        assert r.status_code == 422
        assert "superuser" in r.json()["message"]
        body = {"permissions": ["leads.leads.read", "leads.everything"]}
        r = await client.put("/permissions/roles/analyst", headers=ADMIN, json=body)
        assert r.status_code == 422
        assert r.json()["details"] == {"permissions": ["leads.everything"]}
        r = await client.put("/permissions/roles/admin", headers=ADMIN, json={"permissions": []})
        assert r.status_code == 409
        assert "gateway.permissions.manage" in r.json()["message"]
        r = await client.put("/permissions/roles/analyst", headers=ADMIN, json={"permissions": "all"})
        assert r.status_code == 422
        assert (await client.get("/permissions", headers=ADMIN)).json()["version"] == 0  # nothing changed


async def test_a_change_is_enforced_by_the_gateway_at_once(gateway: Callable[..., Any]) -> None:
    async with gateway() as client:
        assert (await client.get("/api/analytics/kpis", headers=ANALYST)).status_code == 200
        held = sorted(DEFAULT_POLICY.holds("analyst") - {"analytics.kpis.read"})
        r = await client.put("/permissions/roles/analyst", headers=ADMIN, json={"permissions": held})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1
        refused = await client.get("/api/analytics/kpis", headers=ANALYST)
        assert refused.status_code == 403
        assert "analytics.kpis.read" in refused.json()["message"]
        # the gateway's own routes follow the policy too: auditors may be given user management
        assert (await client.get("/users", headers=AUDITOR)).status_code == 403
        held = sorted(DEFAULT_POLICY.holds("auditor") | {"gateway.users.manage"})
        r = await client.put("/permissions/roles/auditor", headers=ADMIN, json={"permissions": held})
        assert r.status_code == 200
        assert r.json()["version"] == 2
        assert (await client.get("/users", headers=AUDITOR)).status_code == 200
