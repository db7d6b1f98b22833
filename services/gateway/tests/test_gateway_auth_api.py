"""Integration (real mongod): login, lockout, tokens, bootstrap admin, admin user management."""

from __future__ import annotations

import asyncio
from typing import Any

from crm_platform.app import token_verifier
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers
from pymongo import AsyncMongoClient

PASSWORD = "a-good-long-password"


def forged_tokens() -> list[str]:
    """Tokens no gateway of this install signed: another key, alg none, HS256 keyed with the
    public key (the algorithm confusion attack), an unknown kid, a wrong audience."""
    from crm_platform.testing import forged_tokens as forge

    return list(forge(["admin"]).values())


async def test_bootstrap_admin_logs_in_and_gets_a_verifiable_token(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        r = await client.post("/auth/login", json={"username": "admin", "password": helpers.admin_password})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "roles",
        }
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 15 * 60
        assert body["refresh_expires_in"] == 8 * 3600
        assert body["roles"] == ["admin"]
        # Any service verifies it with the public key alone.
        service = ServiceSettings.model_validate(
            {"CRM_ENV": "test", "KAFKA_BOOTSTRAP_SERVERS": "unused", "MONGODB_URI": "mongodb://unused"}
        )
        principal = token_verifier(service).verify(body["access_token"])
        assert principal.username == "admin"
        assert principal.roles == {"admin"}
        assert principal.token_id
        assert principal.session_id
        assert principal.expires_at - principal.issued_at == 15 * 60

        me = await client.get("/auth/me", headers=helpers.bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json() == {
            "id": principal.user_id,
            "username": "admin",
            "display_name": "Administrator",
            "roles": ["admin"],
            "active": True,
        }


async def test_bootstrap_happens_only_on_an_empty_database(
    gateway_settings: Any, gateway: Any, helpers: Any
) -> None:
    settings = gateway_settings()
    async with gateway(settings) as client:
        await helpers.login(client)
    again = type(settings).model_validate(
        {**settings.model_dump(), "admin_password": "another-admin-password"}
    )
    async with gateway(again) as client:
        r = await client.post("/auth/login", json={"username": "admin", "password": "another-admin-password"})
        assert r.status_code == 401
        await helpers.login(client)  # the original password still works
        users = await client.get("/users", headers=helpers.bearer(await helpers.login(client)))
        assert users.json()["total"] == 1


async def test_wrong_password_and_unknown_user_look_the_same(gateway: Any) -> None:
    async with gateway() as client:
        wrong = await client.post("/auth/login", json={"username": "admin", "password": "not-the-password"})
        unknown = await client.post("/auth/login", json={"username": "nobody", "password": "whatever-it-is"})
        assert wrong.status_code == unknown.status_code == 401
        for r in (wrong, unknown):
            body = r.json()
            body.pop("request_id")
            assert body == {"error": "unauthorized", "message": "invalid username or password"}
        missing = await client.post("/auth/login", json={"username": "admin"})
        assert missing.status_code == 422
        assert "password" in missing.json()["message"]


async def test_usernames_are_case_insensitive(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        admin = await helpers.login(client, "ADMIN")
        await helpers.create_user(client, admin, "Jane.Doe", ["sales_rep"])
        taken = await client.post(
            "/users",
            headers=helpers.bearer(admin),
            json={"username": "jane.doe", "password": PASSWORD, "roles": ["analyst"]},
        )
        assert taken.status_code == 409
        assert taken.json()["error"] == "conflict"
        r = await client.post("/auth/login", json={"username": "JANE.DOE", "password": PASSWORD})
        assert r.status_code == 200
        assert r.json()["roles"] == ["sales_rep"]


def _from(address: str) -> dict[str, str]:
    """The client address as a trusted proxy (CRM_TRUSTED_PROXY_HOPS=1) reports it."""
    return {"X-Forwarded-For": address}


async def test_guesses_slow_down_the_guesser_not_the_account_owner(gateway: Any, helpers: Any) -> None:
    env = {"CRM_TRUSTED_PROXY_HOPS": 1, "CRM_LOGIN_PAIR_FREE_ATTEMPTS": 3, "CRM_LOGIN_BASE_DELAY_SECONDS": 60}
    async with gateway(**env) as client:
        bad = {"username": "admin", "password": "wrong-password-1"}
        attacker = _from("203.0.113.66")
        for _ in range(3):
            assert (await client.post("/auth/login", json=bad, headers=attacker)).status_code == 401
        slowed = await client.post("/auth/login", json=bad, headers=attacker)
        assert slowed.status_code == 429
        assert slowed.json()["error"] == "too_many_attempts"
        assert 55 <= int(slowed.headers["retry-after"]) <= 60
        # Even the right password waits from the guessing address, unchecked ...
        right = {"username": "admin", "password": helpers.admin_password}
        assert (await client.post("/auth/login", json=right, headers=attacker)).status_code == 429
        # ... while the owner, from their own address, logs in: anonymous guesses lock nobody out.
        owner = await client.post("/auth/login", json=right, headers=_from("198.51.100.7"))
        assert owner.status_code == 200, owner.text


async def test_unknown_names_and_many_names_from_one_address_are_throttled_too(gateway: Any) -> None:
    env = {
        "CRM_TRUSTED_PROXY_HOPS": 1,
        "CRM_LOGIN_CLIENT_FREE_ATTEMPTS": 3,
        "CRM_LOGIN_BASE_DELAY_SECONDS": 30,
    }
    async with gateway(**env) as client:
        sprayer = _from("203.0.113.9")
        for name in ("ghost", "nobody", "admin"):
            r = await client.post(
                "/auth/login", json={"username": name, "password": "Spring2026!!"}, headers=sprayer
            )
            assert r.status_code == 401
        r = await client.post(
            "/auth/login", json={"username": "other", "password": "Spring2026!!"}, headers=sprayer
        )
        assert r.status_code == 429
        assert 25 <= int(r.headers["retry-after"]) <= 30


async def test_an_account_guessed_from_everywhere_is_slowed_with_a_capped_delay(
    gateway: Any, helpers: Any
) -> None:
    env = {
        "CRM_TRUSTED_PROXY_HOPS": 1,
        "CRM_LOGIN_ACCOUNT_FREE_ATTEMPTS": 3,
        "CRM_LOGIN_BASE_DELAY_SECONDS": 600,
        "CRM_LOGIN_ACCOUNT_MAX_DELAY_SECONDS": 120,
    }
    async with gateway(**env) as client:
        bad = {"username": "admin", "password": "wrong-password-1"}
        for i in range(3):
            assert (
                await client.post("/auth/login", json=bad, headers=_from(f"192.0.2.{i}"))
            ).status_code == 401
        r = await client.post("/auth/login", json=bad, headers=_from("192.0.2.99"))
        assert r.status_code == 429
        assert 60 <= int(r.headers["retry-after"]) <= 120  # capped (not 600 s): a wait, never a lockout


async def test_parallel_guesses_cannot_outrun_the_count(gateway: Any, helpers: Any) -> None:
    """Forty wrong guesses and the right one at once: attempts are counted before the password
    is checked, so at most the free attempts reach argon2 and the rest wait."""
    async with gateway(CRM_LOGIN_PAIR_FREE_ATTEMPTS=5, CRM_LOGIN_BASE_DELAY_SECONDS=60) as client:
        deps = client._transport.app.state.deps
        checked = 0
        verify = deps.passwords.verify

        async def counting(password_hash: str | None, password: str) -> bool:
            nonlocal checked
            checked += 1
            return bool(await verify(password_hash, password))

        deps.passwords.verify = counting
        bad = {"username": "admin", "password": "wrong-password-1"}
        right = {"username": "admin", "password": helpers.admin_password}
        results = await asyncio.gather(
            *(client.post("/auth/login", json=bad) for _ in range(40)), client.post("/auth/login", json=right)
        )
        statuses = [r.status_code for r in results]
        assert checked <= 5, f"{checked} passwords checked: {statuses}"
        assert statuses.count(429) >= 36, statuses
        assert set(statuses) <= {200, 401, 429}


async def test_too_many_logins_at_once_are_refused_fast(gateway: Any) -> None:
    async with gateway(CRM_LOGIN_MAX_CONCURRENT=1) as client:
        results = await asyncio.gather(
            *(
                client.post("/auth/login", json={"username": f"user{i}", "password": "wrong-password-1"})
                for i in range(6)
            )
        )
        refused = [r for r in results if r.status_code == 429]
        assert refused, [r.status_code for r in results]
        assert all(r.headers["retry-after"] == "1" for r in refused)


async def test_success_clears_earlier_failures(gateway: Any, helpers: Any) -> None:
    async with gateway(CRM_LOGIN_PAIR_FREE_ATTEMPTS=3, CRM_LOGIN_BASE_DELAY_SECONDS=60) as client:
        bad = {"username": "admin", "password": "wrong-password-1"}
        for _ in range(2):
            assert (await client.post("/auth/login", json=bad)).status_code == 401
        await helpers.login(client)
        for _ in range(2):
            assert (await client.post("/auth/login", json=bad)).status_code == 401
        await helpers.login(client)


async def test_auth_me_needs_a_valid_token(gateway: Any) -> None:
    async with gateway() as client:
        assert (await client.get("/auth/me")).status_code == 401
        r = await client.get("/auth/me", headers={"Authorization": "Bearer not.a.token"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        for forged in forged_tokens():
            r = await client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"})
            assert r.status_code == 401, forged


async def test_user_management_is_admin_only(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        admin = await helpers.login(client)
        await helpers.create_user(client, admin, "rep", ["sales_rep"])
        rep = await helpers.login(client, "rep", PASSWORD)
        assert (await client.get("/users")).status_code == 401
        for method, url, body in [
            ("GET", "/users", None),
            ("POST", "/users", {"username": "x-user", "password": PASSWORD, "roles": ["admin"]}),
            ("PATCH", "/users/whatever", {"roles": ["admin"]}),
        ]:
            r = await client.request(method, url, json=body, headers=helpers.bearer(rep))
            assert r.status_code == 403, (method, url, r.text)
            assert r.json()["error"] == "forbidden"


async def test_admin_creates_lists_updates_and_deactivates_users(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        admin = await helpers.login(client)
        h = helpers.bearer(admin)
        r = await client.post(
            "/users",
            headers=h,
            json={
                "username": "ann",
                "password": PASSWORD,
                "roles": ["marketing", "analyst"],
                "display_name": "Ann Smith",
            },
        )
        assert r.status_code == 201
        ann = r.json()
        assert set(ann) == {"id", "username", "display_name", "roles", "active", "created_at", "updated_at"}
        assert ann["roles"] == ["analyst", "marketing"]
        assert ann["display_name"] == "Ann Smith"
        assert ann["active"] is True

        # A retried creation with its Idempotency-Key gets the first answer, not "taken".
        retry_body = {"username": "ivy", "password": PASSWORD, "roles": ["analyst"]}
        key = {**h, "Idempotency-Key": "create-ivy-1"}
        first = await client.post("/users", headers=key, json=retry_body)
        assert first.status_code == 201, first.text
        again = await client.post("/users", headers=key, json=retry_body)
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["idempotent-replayed"] == "true"

        listed = (await client.get("/users", headers=h)).json()
        assert listed["total"] == 3
        assert [u["username"] for u in listed["items"]] == ["admin", "ann", "ivy"]
        assert (await client.get(f"/users/{ann['id']}", headers=h)).json()["username"] == "ann"
        assert (await client.get("/users/nope", headers=h)).status_code == 404

        ann_token = await helpers.login(client, "ann", PASSWORD)
        changed = await client.patch(f"/users/{ann['id']}", headers=h, json={"roles": ["sales_manager"]})
        assert changed.status_code == 200
        assert changed.json()["roles"] == ["sales_manager"]
        # The old token carried the old roles: the gateway no longer accepts it.
        stale = await client.get("/auth/me", headers=helpers.bearer(ann_token))
        assert stale.status_code == 401
        assert "log in again" in stale.json()["message"]
        fresh = await client.post("/auth/login", json={"username": "ann", "password": PASSWORD})
        assert fresh.json()["roles"] == ["sales_manager"]
        ann_token = fresh.json()["access_token"]

        off = await client.patch(f"/users/{ann['id']}", headers=h, json={"active": False})
        assert off.json()["active"] is False
        refused = await client.post("/auth/login", json={"username": "ann", "password": PASSWORD})
        assert refused.status_code == 401
        assert refused.json()["message"] == "invalid username or password"
        assert (await client.get("/auth/me", headers=helpers.bearer(ann_token))).status_code == 401
        assert (await client.get("/users?active=false", headers=h)).json()["total"] == 1

        on = await client.patch(
            f"/users/{ann['id']}", headers=h, json={"active": True, "password": "new-pass-for-ann"}
        )
        assert on.status_code == 200
        assert (
            await client.post("/auth/login", json={"username": "ann", "password": PASSWORD})
        ).status_code == 401
        await helpers.login(client, "ann", "new-pass-for-ann")
        assert (await client.patch("/users/nope", headers=h, json={"active": False})).status_code == 404


async def test_user_input_is_validated(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        h = helpers.bearer(await helpers.login(client))
        cases = [
            ({"username": "bob", "password": "short", "roles": ["analyst"]}, 422, "at least 12"),
            ({"username": "bob", "password": PASSWORD, "roles": ["wizard"]}, 422, "roles"),
            ({"username": "bob", "password": PASSWORD, "roles": []}, 422, "roles"),
            ({"username": "b b", "password": PASSWORD, "roles": ["analyst"]}, 422, "username"),
            ({"username": "bob", "password": PASSWORD, "roles": ["analyst"], "admin": True}, 422, "admin"),
        ]
        for body, status, text in cases:
            r = await client.post("/users", headers=h, json=body)
            assert r.status_code == status, (body, r.text)
            assert text in r.text, (body, r.text)
            assert "short" not in r.text or "at least" in r.text  # the password itself is not echoed
        bad_patch = await client.patch("/users/x", headers=h, json={"password": "short"})
        assert bad_patch.status_code in (404, 422)


async def test_the_last_active_admin_cannot_be_removed(gateway: Any, helpers: Any) -> None:
    async with gateway() as client:
        admin = await helpers.login(client)
        h = helpers.bearer(admin)
        me = (await client.get("/auth/me", headers=h)).json()
        for change in ({"active": False}, {"roles": ["analyst"]}):
            r = await client.patch(f"/users/{me['id']}", headers=h, json=change)
            assert r.status_code == 409, r.text
            assert "no active administrator" in r.json()["message"]
        second = await helpers.create_user(client, admin, "admin2", ["admin"])
        r = await client.patch(f"/users/{me['id']}", headers=h, json={"roles": ["analyst"]})
        assert r.status_code == 200
        h2 = helpers.bearer(await helpers.login(client, "admin2", PASSWORD))
        r = await client.patch(f"/users/{second['id']}", headers=h2, json={"active": False})
        assert r.status_code == 409


async def test_passwords_are_hashed_with_argon2_and_never_logged(
    gateway_settings: Any, gateway: Any, helpers: Any, capsys: Any
) -> None:
    settings = gateway_settings()
    async with gateway(settings) as client:
        admin = await helpers.login(client)
        await helpers.create_user(client, admin, "carol", ["analyst"], password="carol-secret-pass")
        await client.post("/auth/login", json={"username": "carol", "password": "carol-wrong-pass"})
        # A password typed into the username field is not logged either.
        await client.post("/auth/login", json={"username": "Typed-Pass-Word", "password": "carol-x-pass"})
        await helpers.login(client, "carol", "carol-secret-pass")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    try:
        doc = await mongo[settings.database_name]["users"].find_one({"username_key": "carol"})
    finally:
        await mongo.close()
    assert doc is not None
    assert doc["password_hash"].startswith("$argon2id$")
    assert "carol-secret-pass" not in str(doc)
    out = capsys.readouterr()
    logs = out.out + out.err
    assert '"login failed"' in logs
    assert '"user created"' in logs
    for secret in (
        "carol-secret-pass",
        "carol-wrong-pass",
        "admin-dev-password",
        "Typed-Pass-Word",
        "typed-pass-word",
        "carol-x-pass",
    ):
        assert secret not in logs


async def test_tokens_of_users_the_gateway_does_not_store_still_work(gateway: Any) -> None:
    """Tokens signed with this install's key for users not stored here (test helpers) work."""
    async with gateway() as client:
        r = await client.get("/auth/me", headers=auth_headers(["analyst"], "robot"))
        assert r.status_code == 200
        assert r.json()["username"] == "robot"
