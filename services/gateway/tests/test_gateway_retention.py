"""Retention at the gateway (issue 9) on the real mongod: a deactivated account nobody changed past
its period is anonymised (username, display name, password hash; its id, roles and times stay),
a younger deactivated account and an old active one are kept, each change is audited as
``system:gateway`` / ``RETENTION user``, and an unknown record type stops the gateway at start."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from crm_contracts import utcnow
from crm_platform.audit import AUDIT_LOG
from crm_platform.retention import enforce
from crm_platform.testing import running_app
from gateway import store
from gateway.main import create_app as create_gateway
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration


async def test_an_old_deactivated_account_is_anonymised_and_others_are_kept(
    gateway_settings: Callable[..., GatewaySettings], helpers: Any
) -> None:
    app = create_gateway(gateway_settings())
    async with running_app(app) as client:
        runtime = app.state.runtime
        db = runtime.db
        admin = await helpers.login(client)
        old, young, active = [
            await helpers.create_user(client, admin, name, ["marketing"]) for name in ("olga", "yuri", "alma")
        ]
        for user in (old, young):
            r = await client.patch(
                f"/users/{user['id']}", json={"active": False}, headers=helpers.bearer(admin)
            )
            assert r.status_code == 200, r.text
        long_ago = utcnow() - timedelta(days=31)
        for user in (old, active):
            await db[store.USERS].update_one({"_id": user["id"]}, {"$set": {"updated_at": long_ago}})

        assert await enforce(runtime.store, store.RETENTION_RULES, {"user": 30}) == {"user": 1}
        gone = await db[store.USERS].find_one({"_id": old["id"]})
        assert gone is not None
        assert (gone["username"], gone["username_key"]) == (f"anonymised-{old['id']}",) * 2
        assert (gone["display_name"], gone["password_hash"], gone["roles"]) == (
            "[anonymised]",
            "",
            ["marketing"],
        )
        for kept in (young, active):
            doc = await db[store.USERS].find_one({"_id": kept["id"]})
            assert doc is not None
            assert doc["username"] == kept["username"]
        r = await client.post("/auth/login", json={"username": "olga", "password": "a-good-long-password"})
        assert r.status_code == 401

        entry = await db[AUDIT_LOG].find_one({"record.id": old["id"], "operation": "RETENTION user"})
        assert entry is not None
        assert entry["actor"]["user_id"] == "system:gateway"
        assert "password_hash" in {c["field"] for c in entry["changes"]}
        assert "s3cret" not in str(entry)
        assert await enforce(runtime.store, store.RETENTION_RULES, {"user": 30}) == {"user": 0}, "once only"


def test_an_unknown_record_type_stops_the_gateway_at_start(
    gateway_settings: Callable[..., GatewaySettings],
) -> None:
    with pytest.raises(ValueError, match="unknown record types"):
        create_gateway(gateway_settings(CRM_RETENTION_DAYS='{"session": 30}'))
