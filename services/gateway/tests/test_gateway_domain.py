"""Unit tests of the gateway's pure rules: route table, password policy, lockout, last admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from crm_platform.auth import Role
from gateway.domain.lockout import (
    Attempts,
    LockoutPolicy,
    register_failure,
    register_success,
    retry_after,
)
from gateway.domain.passwords import PasswordPolicy, PolicyViolation, check_username, username_key
from gateway.domain.routes import (
    ROUTE_TABLE,
    SERVICES,
    UnsafePath,
    authorize,
    normalize_path,
    rule,
)
from gateway.domain.users import removes_last_admin

ADMIN, MKT, REP, MGR = Role.ADMIN, Role.MARKETING, Role.SALES_REP, Role.SALES_MANAGER
SVC, CSM, ANALYST = Role.SERVICE_REP, Role.CUSTOMER_SUCCESS_MANAGER, Role.ANALYST
EVERYONE = set(Role)


def allowed_roles(service: str, method: str, path: str) -> set[Role]:
    return {r for r in Role if authorize([r], service, method, path).allowed}


# --- route table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "method", "path", "expected"),
    [
        # leads: scoring rules and behaviours are marketing's
        ("leads", "PUT", "/scoring-rules", {MKT, ADMIN}),
        ("leads", "PUT", "/scoring-rules/web", {MKT, ADMIN}),
        ("leads", "POST", "/leads", {MKT, ADMIN}),
        ("leads", "POST", "/leads/L-1/behaviours", {MKT, ADMIN}),
        # leads: reads for marketing, sales roles and analysts
        ("leads", "GET", "/leads", {MKT, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/leads/123", {MKT, ADMIN, REP, MGR, ANALYST}),
        ("leads", "HEAD", "/leads/123", {MKT, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/scoring-rules", {MKT, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/", {MKT, ADMIN, REP, MGR, ANALYST}),
        # leads: unlisted writes are left to the service
        ("leads", "POST", "/imports", EVERYONE),
        # sales: verdicts and opportunities are sales roles only
        ("sales", "POST", "/inbox/L-1/accept", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/reject", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/recycle", {REP, MGR, ADMIN}),
        ("sales", "POST", "/opportunities", {REP, MGR, ADMIN}),
        ("sales", "PATCH", "/opportunities/o-1/stage", {REP, MGR, ADMIN}),
        ("sales", "DELETE", "/opportunities/o-1", {REP, MGR, ADMIN}),
        ("sales", "GET", "/opportunities", EVERYONE),
        ("sales", "GET", "/inbox", EVERYONE),
        ("sales", "POST", "/inbox/L-1/snooze", EVERYONE),
        ("sales", "POST", "/inbox/accept", EVERYONE),  # not the /inbox/{id}/accept shape
        # service desk: service reps, customer success, admin
        ("service-desk", "GET", "/cases", {SVC, CSM, ADMIN}),
        ("service-desk", "POST", "/cases/c-1/resolve", {SVC, CSM, ADMIN}),
        ("service-desk", "DELETE", "/", {SVC, CSM, ADMIN}),
        # analytics: analysts, sales managers, admin may read
        ("analytics", "GET", "/summary", {ANALYST, MGR, ADMIN}),
        ("analytics", "GET", "/handoffs/lead.qualified/latency", {ANALYST, MGR, ADMIN}),
        ("analytics", "POST", "/exports", EVERYONE),
    ],
)
def test_route_table(service: str, method: str, path: str, expected: set[Role]) -> None:
    assert allowed_roles(service, method, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/scoring-rules/",
        "//scoring-rules",
        "/Scoring-Rules",
        "/SCORING-RULES/web/",
        "/scoring%2Drules",
        "/%73coring-rules",
    ],
)
def test_route_table_is_not_bypassed_by_spelling(path: str) -> None:
    assert not authorize([REP], "leads", "PUT", path).allowed
    assert authorize([MKT], "leads", "PUT", path).allowed


@pytest.mark.parametrize(
    "path", ["/leads/../scoring-rules", "/./scoring-rules", "/%2e%2e/x", "/a/%2E/b", "/a\x00b", "/a%0Ab"]
)
def test_dot_segments_and_control_characters_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        normalize_path(path)


def test_normalize_path() -> None:
    assert normalize_path("") == "/"
    assert normalize_path("/") == "/"
    assert normalize_path("//a///b/") == "/a/b"
    assert normalize_path("/a%20b") == "/a b"
    assert normalize_path("/a%2Fb") == "/a/b"  # an encoded slash is a slash to the policy too


def test_first_match_wins_and_decision_names_the_rule() -> None:
    decision = authorize([REP], "leads", "PUT", "/scoring-rules")
    assert not decision.allowed
    assert decision.rule is not None
    assert decision.rule.pattern == "/scoring-rules/**"
    assert decision.required_roles == {MKT, ADMIN}
    open_route = authorize([REP], "sales", "GET", "/reports")
    assert open_route.allowed
    assert open_route.rule is None
    assert open_route.required_roles is None


def test_a_user_with_no_roles_only_passes_unlisted_routes() -> None:
    assert authorize([], "sales", "GET", "/reports").allowed
    assert not authorize([], "leads", "GET", "/leads").allowed


def test_unknown_role_strings_grant_nothing() -> None:
    assert not authorize(["superuser"], "analytics", "GET", "/summary").allowed


def test_admin_passes_every_rule_in_the_table() -> None:
    for r in ROUTE_TABLE:
        assert Role.ADMIN in r.roles, r


def test_table_is_well_formed() -> None:
    seen = set()
    for r in ROUTE_TABLE:
        assert r.service in SERVICES
        assert r.roles <= set(Role)
        assert r.methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
        assert r.why
        key = (r.service, r.methods, r.pattern)
        assert key not in seen, f"duplicate rule {key}"
        seen.add(key)


def test_every_service_has_a_rule_or_is_deliberately_open() -> None:
    assert {r.service for r in ROUTE_TABLE} == set(SERVICES)


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("no-slash", "must start with"),
        ("/a/**/b", "last segment"),
        ("/a*", "whole segment"),
        ("/a||b", "empty alternative"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        rule("leads", {"GET"}, pattern, {Role.ADMIN}, "x")


def test_rules_need_a_known_service_and_a_role() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        rule("billing", {"GET"}, "/**", {Role.ADMIN})
    with pytest.raises(ValueError, match="at least one role"):
        rule("leads", {"GET"}, "/**", set())


def test_star_matches_exactly_one_segment_and_double_star_zero_or_more() -> None:
    table = (rule("sales", {"GET"}, "/a/*/c", {ADMIN}, "x"), rule("sales", {"GET"}, "/z/**", {ADMIN}, "y"))
    assert not authorize([REP], "sales", "GET", "/a/b/c", table).allowed
    assert authorize([REP], "sales", "GET", "/a/c", table).allowed
    assert authorize([REP], "sales", "GET", "/a/b/b/c", table).allowed
    assert not authorize([REP], "sales", "GET", "/z", table).allowed
    assert not authorize([REP], "sales", "GET", "/z/1/2/3", table).allowed
    assert authorize([REP], "sales", "GET", "/zz", table).allowed


# --- usernames and passwords -------------------------------------------------------------------


def test_usernames() -> None:
    assert check_username("  Jane.Doe ") == "Jane.Doe"
    assert username_key(" Jane.Doe ") == username_key("jane.doe") == "jane.doe"
    assert check_username("a.b@example.com") == "a.b@example.com"
    for bad in ("ab", "", "jane doe", "-jane", "x" * 65, "jané"):
        with pytest.raises(PolicyViolation) as exc:
            check_username(bad)
        assert exc.value.field == "username"


def test_password_policy() -> None:
    policy = PasswordPolicy(min_length=12)
    policy.check("correct horse battery", username="jane")
    policy.check("admin-dev-password", username="admin")
    cases = {
        "short": "at least 12",
        "x" * 257: "at most 256",
        " " * 12: "blank",
        "aaaaaaaaaaab": "4 different",
        "Jane.Doe.1234": None,
    }
    for password, message in cases.items():
        if message is None:
            policy.check(password, username="jane.doe")
            continue
        with pytest.raises(PolicyViolation, match=message) as exc:
            policy.check(password, username="jane")
        assert exc.value.field == "password"
    with pytest.raises(PolicyViolation, match="username"):
        policy.check("Long.Username.1", username="long.username.1")


# --- lockout -----------------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = LockoutPolicy(max_failures=3, window=timedelta(minutes=10), lock_for=timedelta(minutes=5))


def fail(state: Attempts, at: datetime) -> Attempts:
    return register_failure(state, POLICY, at)


def test_locks_after_max_failures_within_the_window() -> None:
    s = fail(Attempts(), T0)
    assert (s.failures, s.window_started, retry_after(s, T0)) == (1, T0, None)
    s = fail(s, T0 + timedelta(minutes=1))
    assert s.failures == 2
    assert retry_after(s, T0) is None
    s = fail(s, T0 + timedelta(minutes=2))
    assert s.locked_until == T0 + timedelta(minutes=7)
    assert retry_after(s, T0 + timedelta(minutes=2)) == 300
    assert retry_after(s, T0 + timedelta(minutes=6, seconds=59, microseconds=1)) == 1
    assert retry_after(s, T0 + timedelta(minutes=7)) is None


def test_failures_outside_the_window_start_a_new_count() -> None:
    s = fail(fail(Attempts(), T0), T0 + timedelta(minutes=1))
    s = fail(s, T0 + timedelta(minutes=10))  # the window (10 min from T0) has closed
    assert s.failures == 1
    assert s.window_started == T0 + timedelta(minutes=10)
    assert s.locked_until is None


def test_attempts_while_locked_do_not_extend_the_lock() -> None:
    s = fail(fail(fail(Attempts(), T0), T0), T0)
    again = fail(s, T0 + timedelta(minutes=4))
    assert again == s


def test_after_the_lock_expires_counting_starts_afresh() -> None:
    s = fail(fail(fail(Attempts(), T0), T0), T0)
    later = T0 + timedelta(minutes=5)
    s = fail(s, later)
    assert (s.failures, s.window_started, s.locked_until) == (1, later, None)


def test_success_clears_everything() -> None:
    assert register_success(fail(Attempts(), T0)) == Attempts()


def test_record_expiry() -> None:
    assert Attempts().expires_at(POLICY) is None
    assert fail(Attempts(), T0).expires_at(POLICY) == T0 + timedelta(minutes=10)
    locked = fail(fail(fail(Attempts(), T0), T0), T0)
    assert locked.expires_at(POLICY) == T0 + timedelta(minutes=5)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_failures"):
        LockoutPolicy(max_failures=0)
    with pytest.raises(ValueError, match="positive"):
        LockoutPolicy(window=timedelta(0))


# --- last administrator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("was_admin", "was_active", "new_roles", "new_active", "others", "expected"),
    [
        (True, True, ["admin"], False, 0, True),  # deactivating the last admin
        (True, True, ["analyst"], True, 0, True),  # demoting the last admin
        (True, True, ["analyst"], True, 1, False),  # another admin remains
        (True, True, ["admin", "analyst"], True, 0, False),  # still an admin
        (True, False, ["analyst"], False, 0, False),  # was not an active admin anyway
        (False, True, ["admin"], True, 0, False),  # promotion
    ],
)
def test_removes_last_admin(
    was_admin: bool, was_active: bool, new_roles: list[str], new_active: bool, others: int, expected: bool
) -> None:
    assert (
        removes_last_admin(
            was_admin=was_admin,
            was_active=was_active,
            new_roles=new_roles,
            new_active=new_active,
            other_active_admins=others,
        )
        is expected
    )
