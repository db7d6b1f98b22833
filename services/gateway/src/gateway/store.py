"""The gateway's own collections: ``users``, ``login_attempts``, ``refresh_tokens`` (hashed),
``revoked_tokens`` (logged-out token ids) and one guard document.

Functions take the database (or a :class:`Tx` for the few multi-document changes).
Password hashes are stored, never passwords.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_platform.auth import Role
from crm_platform.idempotency import ensure_indexes as ensure_idempotency_indexes
from crm_platform.mongo import Tx
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.domain.lockout import Attempts, ThrottlePolicy

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

USERS = "users"
ATTEMPTS = "login_attempts"
REFRESH = "refresh_tokens"
REVOKED = "revoked_tokens"
META = "gateway_meta"
ADMIN_GUARD = "admin_guard"


async def ensure_indexes(db: Db) -> None:
    await db[USERS].create_index("username_key", unique=True, name="username_unique")
    await db[USERS].create_index([("active", ASCENDING), ("roles", ASCENDING)], name="active_roles")
    await db[ATTEMPTS].create_index("expires_at", expireAfterSeconds=0, name="attempts_ttl")
    await db[USERS].create_index("sessions_valid_after", name="sessions_valid_after")
    await db[REFRESH].create_index("expires_at", expireAfterSeconds=0, name="refresh_ttl")
    await db[REFRESH].create_index("session_id", name="refresh_session")
    await db[REFRESH].create_index("user_id", name="refresh_user")
    await db[REVOKED].create_index("expires_at", expireAfterSeconds=0, name="revoked_ttl")
    await ensure_idempotency_indexes(db)


# --- users -----------------------------------------------------------------------------------


async def has_users(db: Db) -> bool:
    return await db[USERS].count_documents({}, limit=1) > 0


async def insert_user(db: Db, doc: Doc, session: Any = None) -> None:
    """Raises :class:`DuplicateKeyError` when the username is taken (any case)."""
    await db[USERS].insert_one(doc, session=session)


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
        attempts=int(doc.get("attempts", 0)),
        last_attempt=doc.get("last_attempt"),
        next_allowed=doc.get("next_allowed"),
    )
    return state, int(doc.get("version", 0))


async def save_attempts(
    db: Db,
    key: str,
    state: Attempts,
    version: int | None,
    policy: ThrottlePolicy,
    now: datetime,
) -> bool:
    """Compare-and-set on ``version``; False when another login changed the record first."""
    fields: Doc = {
        "attempts": state.attempts,
        "last_attempt": state.last_attempt,
        "next_allowed": state.next_allowed,
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


async def clear_attempts(db: Db, *keys: str) -> None:
    await db[ATTEMPTS].delete_many({"_id": {"$in": list(keys)}})


async def uncount_attempt(db: Db, key: str) -> None:
    """Undo one counted attempt (a login that succeeded) without touching its delay."""
    await db[ATTEMPTS].update_one(
        {"_id": key, "attempts": {"$gt": 0}}, {"$inc": {"attempts": -1, "version": 1}}
    )


# --- sessions: refresh tokens and revocations --------------------------------------------------


async def insert_refresh_token(db: Db, doc: Doc) -> None:
    await db[REFRESH].insert_one(doc)


async def use_refresh_token(db: Db, token_hash: str, now: datetime) -> tuple[Doc | None, bool]:
    """Mark a refresh token used, atomically; (its document, True) if this call used it.

    (doc, False): it had been used before — a replay; (None, False): unknown or expired.
    """
    doc = await db[REFRESH].find_one_and_update(
        {"_id": token_hash, "used_at": None, "expires_at": {"$gt": now}},
        {"$set": {"used_at": now}},
    )
    if doc is not None:
        return doc, True
    return await db[REFRESH].find_one({"_id": token_hash, "expires_at": {"$gt": now}}), False


async def revoke_refresh_session(db: Db, session_id: str) -> None:
    await db[REFRESH].delete_many({"session_id": session_id})


async def revoke_refresh_tokens_of(db: Db, user_id: str) -> None:
    await db[REFRESH].delete_many({"user_id": user_id})


async def revoke_token(db: Db, jti: str, expires_at: datetime) -> None:
    await db[REVOKED].update_one({"_id": jti}, {"$setOnInsert": {"expires_at": expires_at}}, upsert=True)


async def revocations(db: Db, *, users_since: int, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """Users whose sessions were revoked after ``users_since`` (epoch s), and revoked token ids."""
    users: dict[str, int] = {}
    async for doc in db[USERS].find(
        {"sessions_valid_after": {"$gt": users_since}}, {"sessions_valid_after": 1}
    ):
        users[str(doc["_id"])] = int(doc["sessions_valid_after"])
    tokens: dict[str, int] = {}
    async for doc in db[REVOKED].find({"expires_at": {"$gt": now}}):
        tokens[str(doc["_id"])] = int(doc["expires_at"].timestamp())
    return users, tokens
