"""Logout, deactivation and refresh with every service running as its own process: a revoked
token stops working directly against a department service, not only at the gateway."""

from __future__ import annotations

import uuid

import httpx
import pytest
from crm_platform.devinfra.journey import Gateway, until
from crm_platform.devinfra.launcher import Platform

pytestmark = pytest.mark.e2e
PASSWORD = "a-good-long-password"
# Services poll the gateway's list every CRM_REVOCATION_POLL_SECONDS (5 s by default).
REVOCATION_DEADLINE = 20.0


def _new_user(gw: Gateway, roles: list[str]) -> tuple[str, dict[str, str]]:
    """A fresh user: (user id, its login answer)."""
    name = f"rev-{uuid.uuid4().hex[:8]}"
    user = gw.call("admin", "POST", "/users", {"username": name, "password": PASSWORD, "roles": roles})
    r = gw.http.post("/auth/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return str(user["id"]), dict(r.json())


def _direct(platform: Platform, service: str, path: str, token: str) -> int:
    """Call a department service directly, bypassing the gateway (as a pod in the cluster could)."""
    r = httpx.get(f"{platform.url(service)}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return r.status_code


def _refused_directly(platform: Platform, service: str, path: str, token: str) -> None:
    until(
        lambda: _direct(platform, service, path, token) == 401 or None,
        timeout=REVOCATION_DEADLINE,
        what=f"{service} to refuse the revoked token",
    )


def test_a_deactivated_user_s_token_stops_working_at_every_service(platform: Platform, gw: Gateway) -> None:
    user_id, session = _new_user(gw, ["analyst"])
    token = session["access_token"]
    assert _direct(platform, "leads", "/leads", token) == 200
    assert _direct(platform, "analytics", "/summary", token) == 200
    gw.call("admin", "PATCH", f"/users/{user_id}", {"active": False})
    headers = {"Authorization": f"Bearer {token}"}
    assert gw.http.get("/api/leads/leads", headers=headers).status_code == 401, "at once at the gateway"
    _refused_directly(platform, "leads", "/leads", token)
    _refused_directly(platform, "analytics", "/summary", token)
    refresh = gw.http.post("/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert refresh.status_code == 401, "a deactivated user cannot refresh either"


def test_logout_revokes_the_token_everywhere_and_ends_the_session(platform: Platform, gw: Gateway) -> None:
    _, session = _new_user(gw, ["sales_manager"])
    token = session["access_token"]
    assert _direct(platform, "sales", "/inbox", token) == 200
    out = gw.http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 204
    _refused_directly(platform, "sales", "/inbox", token)
    refresh = gw.http.post("/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert refresh.status_code == 401


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_session(
    platform: Platform, gw: Gateway
) -> None:
    _, session = _new_user(gw, ["marketing"])
    first = gw.http.post("/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert first.status_code == 200, first.text
    renewed = first.json()
    assert renewed["refresh_token"] != session["refresh_token"]
    assert _direct(platform, "leads", "/leads", renewed["access_token"]) == 200
    # The old refresh token again (stolen and replayed): refused, and the session is over.
    replay = gw.http.post("/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert replay.status_code == 401
    after = gw.http.post("/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert after.status_code == 401
