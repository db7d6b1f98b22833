"""The gateway's own collections: ``users``, ``login_attempts``, ``refresh_tokens`` (hashed),
``revoked_tokens`` (logged-out token ids), ``erasure_requests`` (issue 9) and one guard
document (``gateway_meta``).

The repositories implement ``repository.py``: :class:`MongoUsers` over the unit of
work's transaction (always ``session=tx.session``) or, outside one, over the database;
the others are single-document atomic writes. Entities map to documents in one place
(``user_doc`` / ``user_from_doc``, ``refresh_doc`` / ``refresh_from_doc``); ``save`` sets
the entity's fields, so fields an older document holds and the entity does not know
stay. ``list_users`` is the read side the API lists with. Password hashes are stored,
never passwords.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_platform import permission_policy
from crm_platform.audit import ensure_indexes as ensure_audit_indexes
from crm_platform.auth import Role
from crm_platform.idempotency import ensure_indexes as ensure_idempotency_indexes
from crm_platform.mongo import Tx
from crm_platform.permissions import Policy
from crm_platform.retention import ANONYMISED, Action, Rule
from crm_platform.uow import MongoUnit
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.domain.erasure import Confirmation, ErasureRequest, FirstPass
from gateway.domain.lockout import Attempts, ThrottlePolicy
from gateway.domain.sessions import RefreshToken, RefreshUse
from gateway.domain.users import User

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

USERS = "users"
ATTEMPTS = "login_attempts"
REFRESH = "refresh_tokens"
REVOKED = "revoked_tokens"
META = "gateway_meta"
ERASURES = "erasure_requests"
ADMIN_GUARD = "admin_guard"


async def ensure_indexes(db: Db) -> None:
    await db[USERS].create_index("username_key", unique=True, name="username_unique")
    await db[USERS].create_index([("active", ASCENDING), ("roles", ASCENDING)], name="active_roles")
    await db[ATTEMPTS].create_index("expires_at", expireAfterSeconds=0, name="attempts_ttl")
    await db[USERS].create_index("sessions_valid_after", name="sessions_valid_after")
    # What retention (RETENTION_RULES) looks expired accounts up by.
    await db[USERS].create_index([("active", ASCENDING), ("updated_at", ASCENDING)], name="by_active_updated")
    await ensure_audit_indexes(db)  # user changes are audited (crm_platform.audit)
    await db[REFRESH].create_index("expires_at", expireAfterSeconds=0, name="refresh_ttl")
    await db[REFRESH].create_index("session_id", name="refresh_session")
    await db[REFRESH].create_index("user_id", name="refresh_user")
    await db[REVOKED].create_index("expires_at", expireAfterSeconds=0, name="revoked_ttl")
    await ensure_idempotency_indexes(db)
    await db[ERASURES].create_index([("requested_at", DESCENDING), ("_id", DESCENDING)], name="newest")


# --- users -----------------------------------------------------------------------------------


def user_doc(user: User) -> Doc:
    return {
        "_id": user.id,
        "username": user.username,
        "username_key": user.username_key,
        "display_name": user.display_name,
        "roles": list(user.roles),
        "active": user.active,
        "password_hash": user.password_hash,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "password_changed_at": user.password_changed_at,
        "sessions_valid_after": user.sessions_valid_after,
    }


def user_from_doc(doc: Doc) -> User:
    return User(
        id=str(doc["_id"]),
        username=doc["username"],
        username_key=doc["username_key"],
        display_name=doc.get("display_name") or doc["username"],
        roles=list(doc.get("roles", [])),
        active=bool(doc.get("active", False)),
        password_hash=doc.get("password_hash", ""),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        password_changed_at=doc.get("password_changed_at") or doc["created_at"],
        sessions_valid_after=int(doc.get("sessions_valid_after", 0)),
    )


class MongoUsers:
    """Users over ``db``; every read and write in ``session`` when one is given (a transaction)."""

    def __init__(self, db: Db, session: AsyncClientSession | None = None) -> None:
        self.db, self.session = db, session

    async def get(self, user_id: str) -> User | None:
        return _user(await self.db[USERS].find_one({"_id": user_id}, session=self.session))

    async def by_username_key(self, key: str) -> User | None:
        return _user(await self.db[USERS].find_one({"username_key": key}, session=self.session))

    async def any(self) -> bool:
        return await self.db[USERS].count_documents({}, limit=1, session=self.session) > 0

    async def add(self, user: User) -> None:
        await self.db[USERS].insert_one(user_doc(user), session=self.session)

    async def save(self, user: User) -> None:
        fields = user_doc(user)
        del fields["_id"]
        await self.db[USERS].update_one({"_id": user.id}, {"$set": fields}, session=self.session)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.db[USERS].update_one(
            {"_id": user_id}, {"$set": {"password_hash": password_hash}}, session=self.session
        )

    async def count_other_active_admins(self, user_id: str) -> int:
        return await self.db[USERS].count_documents(
            {"_id": {"$ne": user_id}, "active": True, "roles": str(Role.ADMIN)}, session=self.session
        )

    async def guard_admins(self) -> None:
        # Two concurrent demotions write this same document, so one transaction conflicts,
        # retries and sees the other's effect.
        await self.db[META].update_one(
            {"_id": ADMIN_GUARD}, {"$inc": {"version": 1}}, upsert=True, session=self.session
        )


def _user(doc: Doc | None) -> User | None:
    return None if doc is None else user_from_doc(doc)


async def list_users(db: Db, *, active: bool | None, limit: int, offset: int) -> tuple[list[User], int]:
    query: Doc = {} if active is None else {"active": active}
    total = await db[USERS].count_documents(query)
    cursor = db[USERS].find(query).sort("username_key", ASCENDING)
    docs = await cursor.skip(offset).limit(limit).to_list(None)
    return [user_from_doc(d) for d in docs], total


class MongoPolicy:
    """The policy document (``permission_policy``) in the unit's transaction: audited like any write."""

    def __init__(self, db: Db, session: AsyncClientSession) -> None:
        self.db = db
        self.session = session

    async def get(self) -> Policy:
        return await permission_policy.load_policy(self.db, self.session)

    async def save(self, policy: Policy) -> None:
        await self.db[permission_policy.COLLECTION].replace_one(
            {"_id": permission_policy.DOC_ID},
            permission_policy.policy_doc(policy),
            upsert=True,
            session=self.session,
        )


# --- erasure requests --------------------------------------------------------------------------


def erasure_doc(r: ErasureRequest) -> Doc:
    return {
        "_id": r.id,
        "email_hash": r.email_hash,
        "record_ids": list(r.record_ids),
        "requested_by": r.requested_by,
        "requested_at": r.requested_at,
        "departments": list(r.departments),
        "confirmations": [vars(c).copy() for c in r.confirmations],
        "state": r.state.value,
        "completed_at": r.completed_at,
        "first_passes": [vars(f).copy() for f in r.first_passes],
    }


def erasure_from_doc(d: Doc) -> ErasureRequest:
    return ErasureRequest(
        id=d["_id"],
        email_hash=d.get("email_hash"),
        record_ids=tuple(d.get("record_ids", [])),
        requested_by=d["requested_by"],
        requested_at=d["requested_at"],
        departments=tuple(d["departments"]),
        confirmations=tuple(Confirmation(**c) for c in d.get("confirmations", [])),
        completed_at=d.get("completed_at"),
        first_passes=tuple(FirstPass(**f) for f in d.get("first_passes", [])),
    )


class MongoErasureRequests:
    def __init__(self, db: Db, session: AsyncClientSession) -> None:
        self.db = db
        self.session = session

    async def get(self, request_id: str) -> ErasureRequest | None:
        doc = await self.db[ERASURES].find_one({"_id": request_id}, session=self.session)
        return erasure_from_doc(doc) if doc else None

    async def add(self, request: ErasureRequest) -> None:
        await self.db[ERASURES].insert_one(erasure_doc(request), session=self.session)

    async def save(self, request: ErasureRequest) -> None:
        doc = erasure_doc(request)
        await self.db[ERASURES].update_one({"_id": doc.pop("_id")}, {"$set": doc}, session=self.session)


async def get_erasure_request(db: Db, request_id: str) -> ErasureRequest | None:
    doc = await db[ERASURES].find_one({"_id": request_id})
    return erasure_from_doc(doc) if doc else None


async def list_erasure_requests(db: Db, limit: int, before: str | None) -> list[ErasureRequest]:
    """Newest first; ``before`` an id from the previous page (its time and id are the cursor)."""
    query: Doc = {}
    if before is not None:
        last = await db[ERASURES].find_one({"_id": before}, {"requested_at": 1})
        if last is not None:
            at = last["requested_at"]
            query = {"$or": [{"requested_at": {"$lt": at}}, {"requested_at": at, "_id": {"$lt": before}}]}
    cursor = db[ERASURES].find(query).sort([("requested_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
    return [erasure_from_doc(d) async for d in cursor]


class MongoGatewayUnit(MongoUnit):
    def __init__(self, tx: Tx) -> None:
        super().__init__(tx)
        self.users = MongoUsers(tx.db, tx.session)
        self.policy = MongoPolicy(tx.db, tx.session)
        self.erasures = MongoErasureRequests(tx.db, tx.session)


# --- login attempts ---------------------------------------------------------------------------


class MongoLoginAttempts:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def load(self, key: str) -> tuple[Attempts, int | None]:
        doc = await self.db[ATTEMPTS].find_one({"_id": key})
        if doc is None:
            return Attempts(), None
        state = Attempts(
            attempts=int(doc.get("attempts", 0)),
            last_attempt=doc.get("last_attempt"),
            next_allowed=doc.get("next_allowed"),
        )
        return state, int(doc.get("version", 0))

    async def save(
        self, key: str, state: Attempts, version: int | None, policy: ThrottlePolicy, now: datetime
    ) -> bool:
        fields: Doc = {
            "attempts": state.attempts,
            "last_attempt": state.last_attempt,
            "next_allowed": state.next_allowed,
            "expires_at": state.expires_at(policy) or now,
        }
        if version is None:
            try:
                await self.db[ATTEMPTS].insert_one({"_id": key, **fields, "version": 1})
            except DuplicateKeyError:
                return False
            return True
        result = await self.db[ATTEMPTS].update_one(
            {"_id": key, "version": version}, {"$set": fields, "$inc": {"version": 1}}
        )
        return result.matched_count == 1

    async def clear(self, *keys: str) -> None:
        await self.db[ATTEMPTS].delete_many({"_id": {"$in": list(keys)}})

    async def uncount(self, key: str) -> None:
        await self.db[ATTEMPTS].update_one(
            {"_id": key, "attempts": {"$gt": 0}}, {"$inc": {"attempts": -1, "version": 1}}
        )


# --- sessions: refresh tokens and revocations --------------------------------------------------


def refresh_doc(token: RefreshToken) -> Doc:
    return {
        "_id": token.id,
        "user_id": token.user_id,
        "session_id": token.session_id,
        "issued_at": token.issued_at,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "used_at": token.used_at,
    }


def refresh_from_doc(doc: Doc) -> RefreshToken:
    return RefreshToken(
        id=str(doc["_id"]),
        user_id=str(doc["user_id"]),
        session_id=str(doc["session_id"]),
        issued_at=int(doc.get("issued_at", 0)),
        created_at=doc["created_at"],
        expires_at=doc["expires_at"],
        used_at=doc.get("used_at"),
    )


class MongoRefreshTokens:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def add(self, token: RefreshToken) -> None:
        await self.db[REFRESH].insert_one(refresh_doc(token))

    async def use(self, token_id: str, now: datetime) -> RefreshUse:
        doc = await self.db[REFRESH].find_one_and_update(
            {"_id": token_id, "used_at": None, "expires_at": {"$gt": now}},
            {"$set": {"used_at": now}},
        )
        if doc is not None:
            return RefreshUse(refresh_from_doc(doc), first_use=True)
        doc = await self.db[REFRESH].find_one({"_id": token_id, "expires_at": {"$gt": now}})
        return RefreshUse(None if doc is None else refresh_from_doc(doc), first_use=False)

    async def end_session(self, session_id: str) -> None:
        await self.db[REFRESH].delete_many({"session_id": session_id})

    async def end_sessions_of(self, user_id: str) -> None:
        await self.db[REFRESH].delete_many({"user_id": user_id})


class MongoRevocations:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def revoke_token(self, jti: str, expires_at: datetime) -> None:
        await self.db[REVOKED].update_one(
            {"_id": jti}, {"$setOnInsert": {"expires_at": expires_at}}, upsert=True
        )

    async def load(self, *, users_since: int, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
        """Both lists in one round trip (``$unionWith``, each side on its index): the gateway
        reloads them every second, and two finds were a fifth of an idle gateway's CPU."""
        revoked = [{"$match": {"expires_at": {"$gt": now}}}, {"$project": {"expires_at": 1}}]
        pipeline: list[Doc] = [
            {"$match": {"sessions_valid_after": {"$gt": users_since}}},
            {"$project": {"sessions_valid_after": 1}},
            {"$unionWith": {"coll": REVOKED, "pipeline": revoked}},
        ]
        users: dict[str, int] = {}
        tokens: dict[str, int] = {}
        async for doc in await self.db[USERS].aggregate(pipeline):
            if "sessions_valid_after" in doc:
                users[str(doc["_id"])] = int(doc["sessions_valid_after"])
            else:
                tokens[str(doc["_id"])] = int(doc["expires_at"].timestamp())
        return users, tokens


class MongoRepositories:
    """The repositories outside a transaction, over the gateway's database."""

    def __init__(self, db: Db) -> None:
        self.users = MongoUsers(db)
        self.attempts = MongoLoginAttempts(db)
        self.refresh_tokens = MongoRefreshTokens(db)
        self.revocations = MongoRevocations(db)


# -- retention (crm_platform.retention): the gateway's record types and what expiry does to them --


def anonymous_username(user_id: Any) -> str:
    """A unique stand-in for an expired account's username (usernames are unique keys)."""
    return f"anonymised-{user_id}"


RETENTION_RULES = (
    # A deactivated account nobody changed for the period: the person's names go (the username
    # is unique: a stand-in from the id), the password hash too; its id, roles and times stay,
    # so the audit log's entries still name an account. Sessions, refresh tokens, revocations
    # and failed-login counts are not record types here: their TTL indexes already remove
    # them within hours (CRM_REFRESH_TOKEN_TTL_MINUTES, CRM_LOGIN_FORGET_MINUTES).
    Rule(
        "user",
        USERS,
        "updated_at",
        Action.ANONYMISE,
        eligible={"active": False},
        scrub={
            "username": anonymous_username,
            "username_key": anonymous_username,
            "display_name": ANONYMISED,
            "password_hash": "",
        },
    ),
)
