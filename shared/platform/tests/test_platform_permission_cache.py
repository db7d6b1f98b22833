"""The policy cache (crm_platform.permission_policy.PolicyCache) on the real mongod: in memory,
reloaded on invalidation, kept while the database does not answer."""

from __future__ import annotations

from typing import Any

import pytest
from crm_platform.mongo import connect
from crm_platform.permission_policy import PolicyCache, policy_doc, store_if_newer
from crm_platform.permissions import DEFAULT_POLICY
from pymongo.errors import ServerSelectionTimeoutError

pytestmark = pytest.mark.integration


async def test_the_cache_serves_from_memory_reloads_when_told_and_keeps_the_last_policy_in_an_outage(
    mongodb_uri: str, make_settings: Any
) -> None:
    client = connect(mongodb_uri, "permission-cache-test", timeout_seconds=5)
    db = client[make_settings("cache").database_name]
    try:
        cache = PolicyCache(db, refresh_seconds=60)
        assert await cache.current() is DEFAULT_POLICY  # nothing stored: the defaults
        newer = DEFAULT_POLICY.with_role("analyst", [])
        assert await store_if_newer(db, None, newer)
        assert not await store_if_newer(db, None, DEFAULT_POLICY.with_role("analyst", ["leads.leads.read"]))
        assert await cache.current() is DEFAULT_POLICY  # in memory until reloaded
        cache.invalidate()
        assert await cache.current() == newer
        assert await db["permission_policy"].find_one({}) == policy_doc(newer)
    finally:
        await client.close()

    dead = connect("mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200", "dead")
    try:
        outage = PolicyCache(dead["x"], refresh_seconds=60, policy=newer, loaded=True)
        outage.invalidate()
        assert await outage.current() == newer  # kept, not raised
        with pytest.raises(ServerSelectionTimeoutError):
            await PolicyCache(dead["x"], refresh_seconds=60).current()  # never loaded: fail closed
    finally:
        await dead.close()
