"""The gateway's own collections: ``users`` and ``login_attempts`` (and one guard document).

Functions take the database (or a :class:`Tx` for the few multi-document changes).
Password hashes are stored, never passwords.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_platform.auth import Role
from crm_platform.mongo import Tx
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.domain.lockout import Attempts, LockoutPolicy

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

USERS = "users"
ATTEMPTS = "login_attempts"
META = "gateway_meta"
ADMIN_GUARD = "admin_guard"


async def ensure_indexes(db: Db) -> None:
    await db[USERS].create_index("username_key", unique=True, name="username_unique")
    await db[USERS].create_index([("active", ASCENDING), ("roles", ASCENDING)], name="active_roles")
    await db[ATTEMPTS].create_index("expires_at", expireAfterSeconds=0, name="attempts_ttl")


# --- users -----------------------------------------------------------------------------------


async def has_users(db: Db) -> bool:
    return await db[USERS].count_documents({}, limit=1) > 0


async def insert_user(db: Db, doc: Doc) -> None:
    """Raises :class:`DuplicateKeyError` when the username is taken (any case)."""
    await db[USERS].insert_one(doc)


async def find_by_username_key(db: Db, key: str) -> Doc | None:
    return await db[USERS].find_one({"username_key": key})


async def get_user(db: Db, user_id: str) -> Doc | None:
    return await db[USERS].find_one({"_id": user_id})


async def list_users(db: Db, *, active: bool | None, limit: int, offset: int) -> tuple[list[Doc], int]:
    query: Doc = {} if active is None else {"active": active}
    total = await db[USERS].count_documents(query)
    cursor = db[USERS].find(query, {"password_hash": 0}).sort("username_key", ASCENDING)
    docs = await cursor.skip(offset).limit(limit).to_list(None)
    return docs, total


async def set_password_hash(db: Db, user_id: str, password_hash: str) -> None:
    """A transparent rehash after login (argon2 parameters changed); no session revocation."""
    await db[USERS].update_one({"_id": user_id}, {"$set": {"password_hash": password_hash}})


async def get_user_tx(tx: Tx, user_id: str) -> Doc | None:
    return await tx.db[USERS].find_one({"_id": user_id}, session=tx.session)


async def update_user_tx(tx: Tx, user_id: str, changes: Doc) -> Doc | None:
    return await tx.db[USERS].find_one_and_update(
        {"_id": user_id},
        {"$set": changes},
        session=tx.session,
        return_document=ReturnDocument.AFTER,
    )


async def count_other_active_admins_tx(tx: Tx, user_id: str) -> int:
    return await tx.db[USERS].count_documents(
        {"_id": {"$ne": user_id}, "active": True, "roles": str(Role.ADMIN)}, session=tx.session
    )


async def touch_admin_guard_tx(tx: Tx) -> None:
    """Serialises changes to administrators: two concurrent demotions write the same document,
    so one transaction conflicts and retries, and sees the other's effect (no write skew)."""
    await tx.db[META].update_one(
        {"_id": ADMIN_GUARD}, {"$inc": {"version": 1}}, upsert=True, session=tx.session
    )


# --- login attempts ---------------------------------------------------------------------------


async def load_attempts(db: Db, key: str) -> tuple[Attempts, int | None]:
    doc = await db[ATTEMPTS].find_one({"_id": key})
    if doc is None:
        return Attempts(), None
    state = Attempts(
        failures=int(doc.get("failures", 0)),
        window_started=doc.get("window_started"),
        locked_until=doc.get("locked_until"),
    )
    return state, int(doc.get("version", 0))


async def save_attempts(
    db: Db,
    key: str,
    state: Attempts,
    version: int | None,
    policy: LockoutPolicy,
    now: datetime,
) -> bool:
    """Compare-and-set on ``version``; False when another login changed the record first."""
    fields: Doc = {
        "failures": state.failures,
        "window_started": state.window_started,
        "locked_until": state.locked_until,
        "expires_at": state.expires_at(policy) or now,
    }
    if version is None:
        try:
            await db[ATTEMPTS].insert_one({"_id": key, **fields, "version": 1})
        except DuplicateKeyError:
            return False
        return True
    result = await db[ATTEMPTS].update_one(
        {"_id": key, "version": version}, {"$set": fields, "$inc": {"version": 1}}
    )
    return result.matched_count == 1


async def clear_attempts(db: Db, key: str) -> None:
    await db[ATTEMPTS].delete_one({"_id": key})
