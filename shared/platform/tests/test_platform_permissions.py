"""The permission catalogue and the role -> permission policy (issue 9): pure rules, no I/O."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_contracts import utcnow
from crm_platform import permissions
from crm_platform.errors import Conflict, RuleViolation
from crm_platform.permission_policy import event_of_policy, policy_doc, policy_from_doc, policy_of_event
from crm_platform.permissions import (
    ADMIN_KEEPS,
    CATALOGUE,
    CATALOGUE_RULES,
    DEFAULT_POLICY,
    GATEWAY_TABLE,
    ROLES,
    ROUTE_TABLE,
    Policy,
    permission_for,
    rule,
)
from crm_platform.roles import Role


def test_the_defaults_are_exactly_the_route_table() -> None:
    for r in CATALOGUE_RULES:
        assert DEFAULT_POLICY.roles_with(r.permission) == {str(x) for x in r.roles}, r.permission
    assert DEFAULT_POLICY.version == 0
    assert set(DEFAULT_POLICY.grants) == set(ROLES)


def test_every_rule_has_a_named_permission_and_names_are_unique_per_rule() -> None:
    names = [r.permission for r in ROUTE_TABLE + GATEWAY_TABLE]
    assert len(names) == len(set(names)) == len(CATALOGUE)
    assert all(name.split(".")[0] == CATALOGUE[name].service for name in names)


def test_a_rule_without_a_name_gets_one_derived_from_it() -> None:
    assert rule("sales", {"GET"}, "/reports/**", {Role.ADMIN}).permission == "sales.reports.read"
    assert rule("sales", {"POST"}, "/a|b", {Role.ADMIN}).permission == "sales.a-b.write"


def test_permission_for_a_request() -> None:
    assert permission_for("leads", "GET", "/leads/x-1") == "leads.leads.read"
    assert permission_for("leads", "GET", "/leads/export") == "leads.leads.export"
    assert permission_for("gateway", "PUT", "/permissions/roles/analyst") == "gateway.permissions.manage"
    assert permission_for("sales", "GET", "/reports") is None  # no rule: refused by default elsewhere
    assert permission_for("sales", "GET", "/a/../inbox") is None  # unsafe: never matched


def test_the_permission_of_a_path_is_found_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request asks up to three times (policy, router's and route's role checks): the
    catalogue is scanned once per (service, method, path); a long path is never remembered."""
    scans: list[str] = []
    original = permissions.find_rule

    def counting(service: str, method: str, path: str, *rest: Any) -> Any:
        scans.append(path)
        return original(service, method, path, *rest)

    monkeypatch.setattr(permissions, "find_rule", counting)
    path = f"/leads/{uuid.uuid4().hex}"
    for _ in range(3):
        assert permission_for("leads", "GET", path) == "leads.leads.read"
    long = "/leads/" + "x" * permissions.REMEMBERED_PATH_CHARS
    for _ in range(2):
        assert permission_for("leads", "GET", long) == "leads.leads.read"
    assert scans == [path, long, long]


def test_a_change_replaces_one_role_s_permissions_and_counts_the_version() -> None:
    changed = DEFAULT_POLICY.with_role("analyst", ["leads.leads.read"])
    assert changed.version == 1
    assert changed.holds("analyst") == {"leads.leads.read"}
    assert changed.holds("marketing") == DEFAULT_POLICY.holds("marketing")
    assert not changed.allows(["analyst"], "analytics.kpis.read")
    assert changed.allows(["analyst", "executive"], "analytics.kpis.read")
    assert changed.with_role("analyst", []).version == 2


def test_unknown_roles_and_permissions_are_refused_by_name() -> None:
    with pytest.raises(RuleViolation, match="unknown role 'superuser'"):
        DEFAULT_POLICY.with_role("superuser", [])
    with pytest.raises(RuleViolation, match=r"unknown permission\(s\) \['leads.everything'\]") as exc:
        DEFAULT_POLICY.with_role("analyst", ["leads.leads.read", "leads.everything"])
    assert exc.value.details == {"permissions": ["leads.everything"]}


def test_the_admin_role_keeps_what_administers_permissions_and_accounts() -> None:
    for taken in ADMIN_KEEPS:
        with pytest.raises(Conflict, match=taken):
            DEFAULT_POLICY.with_role("admin", DEFAULT_POLICY.holds("admin") - {taken})
    # anything else may be taken from admin
    assert DEFAULT_POLICY.with_role("admin", ADMIN_KEEPS).holds("admin") == ADMIN_KEEPS


def test_stored_and_published_forms_round_trip_and_drop_what_this_build_does_not_know() -> None:
    policy = DEFAULT_POLICY.with_role("executive", ["analytics.kpis.read"])
    assert policy_from_doc(policy_doc(policy)) == policy
    event = event_of_policy(policy, changed_by="user-1", changed_role="executive", at=utcnow())
    assert policy_of_event(event) == policy
    newer = Policy.of(5, {"analyst": ["leads.leads.read", "billing.invoices.read"], "robot": ["x.y"]})
    assert newer.grants == {"analyst": frozenset({"leads.leads.read"})}
    assert policy_from_doc(None) is DEFAULT_POLICY
