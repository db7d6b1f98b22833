"""The revocation list as the gateway reloads it every second, on the real mongod."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from crm_platform.testing import CommandNames
from gateway.store import REVOKED, USERS, MongoRevocations, ensure_indexes
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


async def test_a_reload_reads_both_lists_in_one_round_trip(mongodb_uri: str) -> None:
    commands = CommandNames()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri, event_listeners=[commands])
    db = client[f"t_gateway_revocations_{uuid.uuid4().hex[:10]}"]
    try:
        await ensure_indexes(db)
        now = datetime.now(UTC).replace(microsecond=0)
        since = int(now.timestamp()) - 900
        await db[USERS].insert_many(
            [
                {"_id": "u-recent", "username_key": "recent", "sessions_valid_after": since + 60},
                {"_id": "u-old", "username_key": "old", "sessions_valid_after": since - 60},
                {"_id": "u-never", "username_key": "never"},
            ]
        )
        await db[REVOKED].insert_many(
            [
                {"_id": "t-live", "expires_at": now + timedelta(minutes=5)},
                {"_id": "t-expired", "expires_at": now - timedelta(minutes=5)},
            ]
        )
        commands.names.clear()
        users, tokens = await MongoRevocations(db).load(users_since=since, now=now)
        assert users == {"u-recent": since + 60}
        assert tokens == {"t-live": int((now + timedelta(minutes=5)).timestamp())}
        assert commands.names == ["aggregate"], "one round trip, not a find per list"
    finally:
        await client.drop_database(db.name)
        await client.close()
