"""Every gateway handler against the in-memory fakes: no database, no network, a manual clock.

These pin the account use cases (what is stored, what is refused, which sessions end)
in milliseconds; ``tests/test_gateway_auth_api.py`` runs the same paths through the
real app on a real mongod.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.governance import (
    ERASURE_DEPARTMENTS,
    ErasureCompletedV1,
    ErasureErasedV1,
    ErasureRequestedV1,
    PermissionsChangedV1,
)
from crm_platform.actor import Actor
from crm_platform.auth import Principal, Role, TokenIssuer, TokenVerifier
from crm_platform.clock import ManualClock
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.keys import SigningKey, thumbprint
from crm_platform.pseudonym import email_hash
from crm_platform.uow import FakeUnitOfWork
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway import handlers
from gateway.domain.erasure import DepartmentState, ErasureState
from gateway.domain.lockout import ThrottlePolicy
from gateway.domain.passwords import PasswordPolicy
from gateway.domain.sessions import token_hash
from gateway.fakes import FakeGatewayUnit, FakeRepositories
from gateway.handlers import Deps, InvalidCredentials, InvalidRefreshToken, Throttled, Tokens, UserChanges
from gateway.revocations import RevocationCache
from gateway.security import Passwords

T0 = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
PASSWORD = "a-good-long-password"
ROOT = Actor.of("user-root", ["admin"], "root")
FREE = 3  # free attempts per throttle key in these tests


def make_deps(**overrides: object) -> Deps:
    private = Ed25519PrivateKey.generate()
    key = SigningKey(thumbprint(private.public_key()), private)
    verifier = TokenVerifier({key.kid: key.public}, "crm-test", "crm-test")
    ids = (f"id-{n}" for n in itertools.count(1))
    unit = FakeGatewayUnit()
    repos = FakeRepositories(unit)
    policy = ThrottlePolicy(free_attempts=FREE, base_delay=timedelta(seconds=10))
    values: dict[str, object] = {
        "uow": FakeUnitOfWork(unit, clock=ManualClock(T0), new_id=lambda: next(ids)),
        "repos": repos,
        "tokens": Tokens(TokenIssuer(key, "crm-test", "crm-test"), timedelta(minutes=15), timedelta(hours=8)),
        "revocations": RevocationCache(verifier, repos.revocations, timedelta(minutes=15)),
        "password_policy": PasswordPolicy(),
        "throttles": {"client": policy, "pair": policy, "account": policy},
        # The cheapest argon2 parameters: these tests pin the use cases, not the hash's cost.
        "passwords": Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)),
    }
    values.update(overrides)
    return Deps(**values)  # type: ignore[arg-type]


def clock(deps: Deps) -> ManualClock:
    assert isinstance(deps.uow.clock, ManualClock)
    return deps.uow.clock


def unit(deps: Deps) -> FakeGatewayUnit:
    assert isinstance(deps.repos, FakeRepositories)
    return deps.repos.unit


async def ann(deps: Deps, roles: list[Role] | None = None) -> str:
    user = await handlers.create_user(deps, "Ann.Lee", PASSWORD, roles or [Role.SALES_REP], None)
    return user.id


# --- users -------------------------------------------------------------------------------------


async def test_a_created_user_is_stored_with_a_hash_sorted_roles_and_millisecond_times() -> None:
    deps = make_deps()
    user = await handlers.create_user(
        deps, "  Ann.Lee ", PASSWORD, [Role.SALES_REP, Role.ANALYST, Role.SALES_REP], None
    )
    assert (user.id, user.username, user.username_key) == ("id-1", "Ann.Lee", "ann.lee")
    assert user.roles == ["analyst", "sales_rep"]
    assert user.display_name == "Ann.Lee"
    assert user.active
    assert user.created_at == T0.replace(microsecond=123000), "MongoDB's millisecond precision"
    assert PASSWORD not in user.password_hash
    assert await deps.passwords.verify(user.password_hash, PASSWORD)
    assert await unit(deps).users.get("id-1") == user


async def test_a_username_is_taken_whatever_its_case() -> None:
    deps = make_deps()
    await ann(deps)
    with pytest.raises(Conflict, match="taken"):
        await handlers.create_user(deps, "ANN.LEE", PASSWORD, [Role.ANALYST], None)
    assert list(unit(deps).users.items) == ["id-1"]


@pytest.mark.parametrize(
    ("username", "password", "roles", "field"),
    [
        ("a", PASSWORD, [Role.ANALYST], "username"),
        ("ann", "short", [Role.ANALYST], "password"),
        ("ann", "ann", [Role.ANALYST], "password"),
        ("ann", PASSWORD, [], "roles"),
    ],
)
async def test_a_user_breaking_a_rule_is_refused_and_not_stored(
    username: str, password: str, roles: list[Role], field: str
) -> None:
    deps = make_deps()
    with pytest.raises(RuleViolation) as refused:
        await handlers.create_user(deps, username, password, roles, None)
    assert refused.value.details["field"] == field
    assert unit(deps).users.items == {}


async def test_the_first_admin_is_bootstrapped_only_into_an_empty_user_database() -> None:
    deps = make_deps()
    assert await handlers.bootstrap_admin(deps, PASSWORD)
    assert not await handlers.bootstrap_admin(deps, "another-long-password")
    [admin] = unit(deps).users.items.values()
    assert (admin.username, admin.roles) == ("admin", ["admin"])
    assert await deps.passwords.verify(admin.password_hash, PASSWORD)


async def test_changing_roles_revokes_the_users_sessions_at_once() -> None:
    deps = make_deps()
    user_id = await ann(deps)
    session = await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    clock(deps).advance(seconds=5)
    changed = await handlers.update_user(deps, user_id, UserChanges(roles=[Role.ANALYST]), ROOT)
    assert changed.roles == ["analyst"]
    assert changed.sessions_valid_after == int(clock(deps)().timestamp()) + 1
    assert deps.revocations.verifier.revocations.users[user_id] == changed.sessions_valid_after
    assert deps.repos.refresh_tokens.items == {}  # type: ignore[attr-defined]
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, session.refresh_token)


async def test_a_new_display_name_alone_revokes_nothing() -> None:
    deps = make_deps()
    user_id = await ann(deps)
    before = await handlers.get_user(deps, user_id)
    changed = await handlers.update_user(deps, user_id, UserChanges(display_name="Ann Lee"), ROOT)
    assert changed.display_name == "Ann Lee"
    assert changed.sessions_valid_after == before.sessions_valid_after
    assert user_id not in deps.revocations.verifier.revocations.users
    assert (await handlers.get_user(deps, user_id)).display_name == "Ann Lee"


async def test_the_last_active_admin_cannot_be_demoted_or_deactivated() -> None:
    deps = make_deps()
    await handlers.bootstrap_admin(deps, PASSWORD)
    [admin_id] = unit(deps).users.items
    for change in (UserChanges(roles=[Role.ANALYST]), UserChanges(active=False)):
        with pytest.raises(Conflict, match="no active administrator"):
            await handlers.update_user(deps, admin_id, change, ROOT)
    assert (await handlers.get_user(deps, admin_id)).roles == ["admin"]
    second = await ann(deps, [Role.ADMIN])
    demoted = await handlers.update_user(deps, admin_id, UserChanges(roles=[Role.ANALYST]), ROOT)
    assert demoted.roles == ["analyst"]
    assert unit(deps).users.admin_guard >= 1
    with pytest.raises(Conflict):
        await handlers.update_user(deps, second, UserChanges(active=False), ROOT)


async def test_a_password_reset_checks_the_policy_and_lifts_the_account_throttle() -> None:
    deps = make_deps()
    user_id = await ann(deps)
    with pytest.raises(RuleViolation):
        await handlers.update_user(deps, user_id, UserChanges(password="ann.lee"), ROOT)
    for n in range(FREE):
        with pytest.raises(InvalidCredentials):
            await handlers.login(deps, "ann.lee", "wrong-password-1", f"10.0.0.{n}")
    with pytest.raises(Throttled):  # the account, from anywhere
        await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.8")
    await handlers.update_user(deps, user_id, UserChanges(password="a-brand-new-password"), ROOT)
    assert "account:ann.lee" not in deps.repos.attempts.items  # type: ignore[attr-defined]
    assert await handlers.login(deps, "Ann.Lee", "a-brand-new-password", "10.0.0.9")


async def test_changing_an_unknown_user_is_not_found() -> None:
    deps = make_deps()
    with pytest.raises(NotFound):
        await handlers.update_user(deps, "nobody", UserChanges(active=False), ROOT)
    with pytest.raises(NotFound):
        await handlers.get_user(deps, "nobody")


# --- login, refresh, logout --------------------------------------------------------------------


async def test_a_login_issues_a_verifiable_token_and_stores_only_the_refresh_tokens_hash() -> None:
    deps = make_deps()
    user_id = await ann(deps)
    result = await handlers.login(deps, " ANN.lee", PASSWORD, "10.0.0.1")
    principal = deps.revocations.verifier.verify(result.access_token)
    assert (principal.user_id, principal.username, principal.roles) == (user_id, "Ann.Lee", {"sales_rep"})
    assert (result.user_id, result.roles, result.expires_in) == (user_id, ["sales_rep"], 15 * 60)
    [stored] = deps.repos.refresh_tokens.items.values()  # type: ignore[attr-defined]
    assert stored.id == token_hash(result.refresh_token) != result.refresh_token
    assert (stored.user_id, stored.session_id) == (user_id, principal.session_id)
    assert stored.expires_at == T0 + timedelta(hours=8)


@pytest.mark.parametrize("case", ["wrong password", "unknown user", "deactivated"])
async def test_every_failed_login_looks_the_same(case: str) -> None:
    deps = make_deps()
    await handlers.bootstrap_admin(deps, PASSWORD)
    user_id = await ann(deps)
    username, password = "ann.lee", PASSWORD
    if case == "wrong password":
        password = "wrong-password-1"
    elif case == "unknown user":
        username = "bob"
    else:
        await handlers.update_user(deps, user_id, UserChanges(active=False), ROOT)
    with pytest.raises(InvalidCredentials, match=r"^invalid username or password$"):
        await handlers.login(deps, username, password, "10.0.0.1")
    assert deps.repos.refresh_tokens.items == {}  # type: ignore[attr-defined]


async def test_attempts_are_counted_before_the_password_so_the_right_one_waits_too() -> None:
    deps = make_deps()
    await ann(deps)
    for _ in range(FREE):
        with pytest.raises(InvalidCredentials):
            await handlers.login(deps, "ann.lee", "wrong-password-1", "10.0.0.1")
    with pytest.raises(Throttled) as throttled:
        await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    assert throttled.value.retry_after == 10
    clock(deps).advance(seconds=10)
    assert await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    attempts = deps.repos.attempts.items  # type: ignore[attr-defined]
    assert "pair:ann.lee|10.0.0.1" not in attempts
    assert "account:ann.lee" not in attempts
    assert attempts["client:10.0.0.1"][0].attempts == FREE, "the successful login uncounted itself"


async def test_too_many_logins_at_once_are_refused_before_any_work() -> None:
    deps = make_deps(max_concurrent_logins=2, logins_in_flight=2)
    with pytest.raises(Throttled) as throttled:
        await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    assert throttled.value.retry_after == 1
    assert deps.repos.attempts.items == {}  # type: ignore[attr-defined]


async def test_a_refresh_rotates_the_token_within_the_same_session() -> None:
    deps = make_deps()
    await ann(deps)
    first = await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    clock(deps).advance(hours=1)
    second = await handlers.refresh(deps, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    sid = deps.revocations.verifier.verify(first.access_token).session_id
    assert deps.revocations.verifier.verify(second.access_token).session_id == sid
    assert second.refresh_expires_in == 7 * 3600, "the session keeps its first expiry"


async def test_a_replayed_refresh_token_ends_the_whole_session() -> None:
    deps = make_deps()
    await ann(deps)
    first = await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    second = await handlers.refresh(deps, first.refresh_token)
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, first.refresh_token)
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, second.refresh_token)


async def test_an_expired_or_unknown_refresh_token_is_refused() -> None:
    deps = make_deps()
    await ann(deps)
    session = await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, "not-a-token")
    clock(deps).advance(hours=8)
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, session.refresh_token)


async def test_logout_revokes_the_token_and_ends_its_session() -> None:
    deps = make_deps()
    await ann(deps)
    session = await handlers.login(deps, "ann.lee", PASSWORD, "10.0.0.1")
    principal: Principal = deps.revocations.verifier.verify(session.access_token)
    await handlers.logout(deps, principal)
    assert deps.revocations.verifier.revocations.tokens[principal.token_id] == principal.expires_at
    assert principal.token_id in deps.repos.revocations.tokens  # type: ignore[attr-defined]
    with pytest.raises(InvalidRefreshToken):
        await handlers.refresh(deps, session.refresh_token)


async def test_a_reload_keeps_revocations_made_here_and_adds_those_of_other_replicas() -> None:
    deps = make_deps()
    user_id = await ann(deps)
    await handlers.update_user(deps, user_id, UserChanges(active=False), ROOT)
    await deps.repos.revocations.revoke_token("jti-elsewhere", datetime.now(UTC) + timedelta(minutes=5))
    await deps.revocations.reload()
    revoked = deps.revocations.verifier.revocations
    assert user_id in revoked.users
    assert "jti-elsewhere" in revoked.tokens


# --- permissions -------------------------------------------------------------------------------


async def test_a_permission_change_is_saved_published_and_dropped_from_the_cache() -> None:
    dropped: list[int] = []
    deps = make_deps(on_policy_change=lambda: dropped.append(1))
    policy = await handlers.set_role_permissions(deps, "executive", ["analytics.kpis.read"], ROOT)
    assert policy.version == 1
    assert await unit(deps).policy.get() == policy
    (event,) = unit(deps).emitted(PermissionsChangedV1)
    assert (event.policy_version, event.changed_by, event.changed_role) == (1, "user-root", "executive")
    assert {g.role: g.permissions for g in event.grants}["executive"] == ["analytics.kpis.read"]
    assert event.changed_at == T0.replace(microsecond=123000)
    assert dropped == [1]


async def test_a_refused_permission_change_saves_and_publishes_nothing() -> None:
    deps = make_deps()
    with pytest.raises(RuleViolation, match=r"billing\.read"):
        await handlers.set_role_permissions(deps, "analyst", ["billing.read"], ROOT)
    with pytest.raises(Conflict):
        await handlers.set_role_permissions(deps, "admin", [], ROOT)
    assert (await unit(deps).policy.get()).version == 0
    assert unit(deps).emitted(PermissionsChangedV1) == []


# --- erasure requests (issue 9) --------------------------------------------------------------------


def _completed(request_id: str, department: str, records: int = 2) -> ErasureCompletedV1:
    return ErasureCompletedV1(
        request_id=request_id,
        department=department,
        records_erased=records,
        audit_entries_rewritten=3,
        duration_ms=1500,
        completed_at=T0 + timedelta(seconds=1.5),
    )


def _erased(request_id: str, department: str, records: int = 2) -> ErasureErasedV1:
    return ErasureErasedV1(
        request_id=request_id,
        department=department,
        records_erased=records,
        audit_entries_rewritten=3,
        duration_ms=500,
        erased_at=T0 + timedelta(seconds=0.5),
        recheck_due_at=T0 + timedelta(seconds=190.5),
    )


def _envelope(event: ErasureCompletedV1 | ErasureErasedV1, source: str) -> Envelope:
    return envelope_for(event, source=source, correlation_id=event.request_id)


async def test_an_erasure_request_keeps_and_publishes_only_the_keyed_hash() -> None:
    deps = make_deps()
    request = await handlers.file_erasure_request(deps, " Ada@Example.com ", ["lead-7"], ROOT)
    assert request.email_hash == email_hash("ada@example.com")
    assert await unit(deps).erasures.get(request.id) == request
    (event,) = unit(deps).emitted(ErasureRequestedV1)
    assert (event.request_id, event.email_hash, event.record_ids) == (
        request.id,
        request.email_hash,
        ["lead-7"],
    )
    assert "ada" not in event.model_dump_json().lower()
    assert request.state == ErasureState.PENDING


async def test_an_erasure_request_must_name_the_person() -> None:
    deps = make_deps()
    with pytest.raises(RuleViolation, match="email or record_ids"):
        await handlers.file_erasure_request(deps, None, [], ROOT)
    assert unit(deps).emitted(ErasureRequestedV1) == []


async def test_confirmations_fold_once_per_department_until_completed() -> None:
    deps = make_deps()
    request = await handlers.file_erasure_request(deps, "ada@example.com", [], ROOT)
    for department in ERASURE_DEPARTMENTS[:-1]:
        event = _completed(request.id, department)
        await handlers.on_erasure_completed(deps.uow, event, _envelope(event, department))
    again = _completed(request.id, "leads", records=99)  # a re-sent copy: the first counts
    await handlers.on_erasure_completed(deps.uow, again, _envelope(again, "leads"))
    pending = await unit(deps).erasures.get(request.id)
    assert pending is not None
    assert pending.state == ErasureState.PENDING
    assert pending.confirmation("leads").records_erased == 2  # type: ignore[union-attr]
    last = _completed(request.id, ERASURE_DEPARTMENTS[-1])
    await handlers.on_erasure_completed(deps.uow, last, _envelope(last, ERASURE_DEPARTMENTS[-1]))
    done = await unit(deps).erasures.get(request.id)
    assert done is not None
    assert done.state == ErasureState.COMPLETED
    assert done.completed_at == T0 + timedelta(seconds=1.5)


async def test_a_confirmation_from_another_department_or_for_no_request_is_a_dead_letter() -> None:
    deps = make_deps()
    request = await handlers.file_erasure_request(deps, "ada@example.com", [], ROOT)
    forged = _completed(request.id, "sales")
    with pytest.raises(DeadLetter) as wrong:
        await handlers.on_erasure_completed(deps.uow, forged, _envelope(forged, "leads"))
    assert wrong.value.reason == "wrong_department"
    unknown = _completed("no-such-request", "sales")
    with pytest.raises(DeadLetter) as missing:
        await handlers.on_erasure_completed(deps.uow, unknown, _envelope(unknown, "sales"))
    assert missing.value.reason == "unknown_erasure_request"
    stored = await unit(deps).erasures.get(request.id)
    assert stored is not None
    assert stored.confirmations == ()


async def test_a_first_pass_shows_erased_until_the_rechecks_confirmation_counting_the_late_ones() -> None:
    deps = make_deps()
    request = await handlers.file_erasure_request(deps, "ada@example.com", [], ROOT)
    for department in ("leads", "sales", "service-desk"):
        first = _erased(request.id, department)
        await handlers.on_erasure_erased(deps.uow, first, _envelope(first, department))
    again = _erased(request.id, "sales", records=7)  # a re-sent copy: the first counts
    await handlers.on_erasure_erased(deps.uow, again, _envelope(again, "sales"))
    analytics = _completed(request.id, "analytics", records=0)
    await handlers.on_erasure_completed(deps.uow, analytics, _envelope(analytics, "analytics"))
    erased = await unit(deps).erasures.get(request.id)
    assert erased is not None
    assert erased.state == ErasureState.PENDING, "a first pass is not a confirmation"
    assert erased.department_state("sales") == DepartmentState.ERASED
    assert erased.first_pass("sales").records_erased == 2  # type: ignore[union-attr]
    assert erased.department_state("analytics") == DepartmentState.CONFIRMED
    assert erased.rechecks_due_by == T0 + timedelta(seconds=190.5)
    for department, total in (("leads", 3), ("sales", 2), ("service-desk", 2)):
        done = _completed(request.id, department, records=total)
        await handlers.on_erasure_completed(deps.uow, done, _envelope(done, department))
    completed = await unit(deps).erasures.get(request.id)
    assert completed is not None
    assert completed.state == ErasureState.COMPLETED
    assert completed.rechecks_due_by is None
    late = {d: completed.late_records(d) for d in ERASURE_DEPARTMENTS}
    assert late == {"leads": 1, "sales": 0, "service-desk": 0, "analytics": None}


async def test_a_forged_first_pass_or_one_for_no_request_is_a_dead_letter() -> None:
    deps = make_deps()
    request = await handlers.file_erasure_request(deps, "ada@example.com", [], ROOT)
    forged = _erased(request.id, "sales")
    with pytest.raises(DeadLetter) as wrong:
        await handlers.on_erasure_erased(deps.uow, forged, _envelope(forged, "leads"))
    assert wrong.value.reason == "wrong_department"
    unknown = _erased("no-such-request", "sales")
    with pytest.raises(DeadLetter) as missing:
        await handlers.on_erasure_erased(deps.uow, unknown, _envelope(unknown, "sales"))
    assert missing.value.reason == "unknown_erasure_request"
    stored = await unit(deps).erasures.get(request.id)
    assert stored is not None
    assert stored.first_passes == ()
