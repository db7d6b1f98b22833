"""Unit tests of the gateway's pure rules: route table, password policy, login throttle, last admin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_platform.auth import Role
from crm_platform.errors import Conflict
from gateway.domain import routes
from gateway.domain.lockout import Attempts, ThrottlePolicy, register_attempt, retry_after
from gateway.domain.passwords import PasswordPolicy, PolicyViolation, check_username, username_key
from gateway.domain.routes import (
    ROUTE_TABLE,
    SERVICES,
    UnsafePath,
    authorize,
    find_rule,
    normalize_path,
    rule,
)
from gateway.domain.users import Applied, User, UserChange, removes_last_admin

ADMIN, MKT, REP, MGR = Role.ADMIN, Role.MARKETING, Role.SALES_REP, Role.SALES_MANAGER
SVC, CSM, ANALYST = Role.SERVICE_REP, Role.CUSTOMER_SUCCESS_MANAGER, Role.ANALYST
MKT_MGR, SVC_LEAD, EXEC = Role.MARKETING_MANAGER, Role.SERVICE_LEAD, Role.EXECUTIVE
EVERYONE = set(Role)


def allowed_roles(service: str, method: str, path: str) -> set[Role]:
    return {r for r in Role if authorize([r], service, method, path).allowed}


# --- route table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "method", "path", "expected"),
    [
        # leads: scoring rules and behaviours are marketing's
        ("leads", "PUT", "/scoring-rules", {MKT, MKT_MGR, ADMIN}),
        ("leads", "PUT", "/scoring-rules/web", {MKT, MKT_MGR, ADMIN}),
        ("leads", "POST", "/leads", {MKT, MKT_MGR, ADMIN}),
        ("leads", "POST", "/leads/L-1/behaviours", {MKT, MKT_MGR, ADMIN}),
        # leads: reads for marketing, sales roles and analysts
        ("leads", "GET", "/leads", {MKT, MKT_MGR, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/leads/123", {MKT, MKT_MGR, ADMIN, REP, MGR, ANALYST}),
        ("leads", "HEAD", "/leads/123", {MKT, MKT_MGR, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/scoring-rules", {MKT, MKT_MGR, ADMIN, REP, MGR, ANALYST}),
        ("leads", "GET", "/scoring-rules/history", {MKT, MKT_MGR, ADMIN, REP, MGR, ANALYST}),
        # deny by default: routes without a rule are refused to everyone
        ("leads", "GET", "/", set()),
        ("leads", "POST", "/exports", set()),
        # imports and the export are marketing's
        ("leads", "POST", "/imports", {MKT, MKT_MGR, ADMIN}),
        ("leads", "PUT", "/imports/i-1/file", {MKT, MKT_MGR, ADMIN}),
        ("leads", "GET", "/leads/export", {MKT, MKT_MGR, ADMIN}),
        # sales: verdicts and opportunities are sales roles only
        ("sales", "POST", "/inbox/L-1/accept", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/reject", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/recycle", {REP, MGR, ADMIN}),
        ("sales", "POST", "/opportunities", {REP, MGR, ADMIN}),
        ("sales", "PATCH", "/opportunities/o-1/stage", {REP, MGR, ADMIN}),
        ("sales", "DELETE", "/opportunities/o-1", {REP, MGR, ADMIN}),
        ("sales", "GET", "/opportunities", {REP, MGR, ADMIN}),
        ("sales", "GET", "/inbox", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/assign", {MGR, ADMIN}),
        ("sales", "GET", "/forecast", {REP, MGR, ADMIN, ANALYST}),
        ("sales", "PUT", "/pipeline", {MGR, ADMIN}),
        ("sales", "PUT", "/reps/ann", {MGR, ADMIN}),
        ("sales", "GET", "/reps", {REP, MGR, ADMIN}),
        ("sales", "POST", "/inbox/L-1/snooze", set()),
        ("sales", "POST", "/inbox/accept", set()),  # not the /inbox/{id}/accept shape
        ("sales", "GET", "/reports", set()),
        # service desk: service reps, customer success, admin
        ("service-desk", "GET", "/tickets", {SVC, CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "POST", "/tickets/t-1/resolve", {SVC, CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "PUT", "/accounts/a-1/csm", {CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "PUT", "/config", {ADMIN}),
        ("service-desk", "GET", "/config", {SVC, CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "DELETE", "/", set()),
        # voice of the customer: each department works its own queue, its manager assigns
        ("leads", "POST", "/action-queue/i-1/accept", {MKT, MKT_MGR, ADMIN}),
        ("leads", "POST", "/action-queue/i-1/assign", {MKT_MGR, ADMIN}),
        ("sales", "POST", "/action-queue/i-1/assign", {MGR, ADMIN}),
        ("service-desk", "POST", "/action-items", {SVC, CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "POST", "/action-queue/i-1/assign", {SVC_LEAD, ADMIN}),
        # commitment reviews: customer success reviews, sales asks (on its opportunity)
        ("service-desk", "GET", "/commitment-reviews", {CSM, SVC_LEAD, ADMIN}),
        ("service-desk", "POST", "/commitment-reviews/r-1/verdict", {CSM, SVC_LEAD, ADMIN}),
        ("sales", "POST", "/opportunities/o-1/commitment-review", {REP, MGR, ADMIN}),
        ("sales", "PUT", "/config/commitment-review", {MGR, ADMIN}),
        # analytics: analysts, sales managers, admin may read
        ("analytics", "GET", "/summary", {ANALYST, MGR, EXEC, ADMIN}),
        ("analytics", "GET", "/handoffs/lead.qualified/latency", {ANALYST, MGR, EXEC, ADMIN}),
        ("analytics", "POST", "/exports", set()),
        ("analytics", "POST", "/summary", set()),
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
    "path",
    [
        "/leads/../scoring-rules",
        "/./scoring-rules",
        "/%2e%2e/x",
        "/a/%2E/b",
        "/a\x00b",
        "/a%0Ab",
        "/opportunities#",  # a client would cut the path here: matched as one route, sent as another
        "/scoring-rules#/x",
        "/leads?x",
    ],
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
    assert decision.required_roles == {MKT, MKT_MGR, ADMIN}
    unlisted = authorize(list(Role), "sales", "GET", "/reports")
    assert not unlisted.allowed  # deny by default, even for every role at once
    assert unlisted.rule is None
    assert unlisted.required_roles is None


def test_a_user_with_no_roles_passes_nothing() -> None:
    assert not authorize([], "sales", "GET", "/reports").allowed
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
    assert find_rule("sales", "GET", "/a/b/c", table) is table[0]
    assert find_rule("sales", "GET", "/a/c", table) is None
    assert find_rule("sales", "GET", "/a/b/b/c", table) is None
    assert find_rule("sales", "GET", "/z", table) is table[1]
    assert find_rule("sales", "GET", "/z/1/2/3", table) is table[1]
    assert find_rule("sales", "GET", "/zz", table) is None


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


# --- login throttle ----------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = ThrottlePolicy(
    free_attempts=3,
    base_delay=timedelta(seconds=2),
    max_delay=timedelta(seconds=30),
    forget_after=timedelta(minutes=10),
)


def attempt(state: Attempts, at: datetime) -> Attempts:
    return register_attempt(state, POLICY, at)


def test_free_attempts_then_doubling_delays_up_to_the_cap() -> None:
    s = Attempts()
    for i in range(1, 3):
        s = attempt(s, T0)
        assert (s.attempts, retry_after(s, T0)) == (i, None)
    s = attempt(s, T0)  # the third: the next must wait the base delay
    assert retry_after(s, T0) == 2
    waits = []
    for _ in range(5):
        at = s.next_allowed or T0
        s = attempt(s, at)
        waits.append(retry_after(s, at))
    assert waits == [4, 8, 16, 30, 30]


def test_a_quiet_period_forgets_the_count() -> None:
    s = attempt(attempt(attempt(Attempts(), T0), T0), T0)
    later = T0 + timedelta(minutes=10)
    s = attempt(s, later)
    assert (s.attempts, s.last_attempt, s.next_allowed) == (1, later, None)


def test_retry_after_rounds_up() -> None:
    s = attempt(attempt(attempt(Attempts(), T0), T0), T0)
    assert retry_after(s, T0 + timedelta(seconds=1, microseconds=1)) == 1
    assert retry_after(s, T0 + timedelta(seconds=2)) is None


def test_record_expiry() -> None:
    assert Attempts().expires_at(POLICY) is None
    assert attempt(Attempts(), T0).expires_at(POLICY) == T0 + timedelta(minutes=10)


def test_huge_counts_do_not_overflow() -> None:
    assert POLICY.delay_after(10_000) == timedelta(seconds=30)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="free_attempts"):
        ThrottlePolicy(free_attempts=0)
    with pytest.raises(ValueError, match="positive"):
        ThrottlePolicy(forget_after=timedelta(0))


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


# --- the User entity ---------------------------------------------------------------------------

T_USER = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def a_user(roles: list[str], active: bool = True) -> User:
    user = User.register(
        user_id="u-1", username="Ann", roles=roles, display_name=None, password_hash="h", now=T_USER
    )
    user.active = active
    return user


def test_what_grants_access_revokes_sessions_and_a_display_name_does_not() -> None:
    later = T_USER + timedelta(minutes=1)
    for change in (UserChange(roles=["analyst"]), UserChange(active=False), UserChange(password_hash="h2")):
        user = a_user(["sales_rep"])
        assert user.apply(change, later) == Applied(changed=True, revoked=True)
        assert user.sessions_valid_after == int(later.timestamp()) + 1
        assert not user.accepts_session(int(later.timestamp()))
    user = a_user(["sales_rep"])
    assert user.apply(UserChange(display_name="Ann L."), later) == Applied(changed=True, revoked=False)
    assert user.accepts_session(int(T_USER.timestamp()))
    assert user.apply(UserChange(roles=["sales_rep"], active=True), later) == Applied(False, False)


def test_only_a_change_of_an_admins_access_needs_the_other_admins() -> None:
    admin = a_user(["admin"])
    assert admin.touches_admin(UserChange(roles=["analyst"]))
    assert admin.touches_admin(UserChange(active=False))
    assert not admin.touches_admin(UserChange(roles=["admin"], display_name="Root"))
    assert not a_user(["analyst"]).touches_admin(UserChange(roles=["admin"]))
    with pytest.raises(Conflict):
        admin.apply(UserChange(active=False), T_USER, other_active_admins=0)
    assert admin.active, "a refused change changes nothing"
    assert a_user(["admin"], active=False).apply(UserChange(roles=["analyst"]), T_USER, other_active_admins=0)


def test_the_rule_of_a_path_is_found_once_and_an_unsafe_path_refused_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each forwarded request is authorised against the route table: its rule is looked up once
    per (service, method, path); the roles and the policy still decide every time."""
    scans: list[str] = []

    def counting(service: str, method: str, path: str, *rest: Any) -> Any:
        scans.append(path)
        return find_rule(service, method, path, *rest)

    monkeypatch.setattr(routes, "find_rule", counting)
    path = f"/leads/{uuid.uuid4().hex}"
    assert not authorize([REP], "leads", "PATCH", path).allowed
    assert authorize([MKT], "leads", "PATCH", path).allowed
    assert authorize([ADMIN], "leads", "PATCH", path).allowed
    assert scans == [path]
    for _ in range(2):
        with pytest.raises(UnsafePath):
            authorize([ADMIN], "leads", "GET", f"/x{uuid.uuid4().hex}/../leads")
