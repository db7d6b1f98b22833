"""The role -> permission policy as each process keeps and enforces it (issue 9).

The gateway owns the policy (an administrator changes it there) and publishes every new
version as ``permissions.changed`` on ``crm.gateway.permissions``; each department's
consumer stores the newest version it has seen in its own database
(:data:`COLLECTION`, one document, written in the consumer's transaction and so in its
audit log) and every replica keeps it in memory in a :class:`PolicyCache` (reloaded every
``CRM_CONFIG_CACHE_SECONDS``; the replica that applied the event reloads at once after the
commit, the others within that time). Until a department has received any version it
enforces :data:`DEFAULT_POLICY`.

Enforcement is the platform's, nothing to wire in a service: ``crm_platform.app.create_app``
puts :func:`enforce_permission` on every protected router (a request whose route needs a
permission none of the user's roles holds is refused with 403 naming it), and
``crm_platform.auth.require_roles`` lets through the roles holding the route's permission
(so a grant to a role reaches the service's role checks too; a route without a rule keeps
its coded roles).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_contracts import Envelope
from crm_contracts.events.governance import PermissionsChangedV1, RoleGrant
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from crm_platform.errors import is_database_outage
from crm_platform.permissions import DEFAULT_POLICY, Policy, normalize_path, permission_for

if TYPE_CHECKING:  # FastAPI only where a request is checked: the worker stores policies only
    from fastapi import Request

log = logging.getLogger("crm.permissions")

COLLECTION = "permission_policy"
DOC_ID = "current"

Db = AsyncDatabase[dict[str, Any]]


def policy_doc(policy: Policy) -> dict[str, Any]:
    return {"_id": DOC_ID, "version": policy.version, "grants": policy.to_grants()}


def policy_from_doc(doc: dict[str, Any] | None) -> Policy:
    if doc is None:
        return DEFAULT_POLICY
    grants = doc.get("grants") or {}
    return Policy.of(int(doc.get("version", 0)), {str(k): [str(p) for p in v] for k, v in grants.items()})


async def load_policy(db: Db, session: AsyncClientSession | None = None) -> Policy:
    return policy_from_doc(await db[COLLECTION].find_one({"_id": DOC_ID}, session=session))


async def store_if_newer(db: Db, session: AsyncClientSession | None, policy: Policy) -> bool:
    """Keep ``policy`` unless a version as new is stored already (a re-sent or older copy)."""
    current = await load_policy(db, session)
    if policy.version <= current.version:
        return False
    await db[COLLECTION].replace_one({"_id": DOC_ID}, policy_doc(policy), upsert=True, session=session)
    return True


def policy_of_event(event: PermissionsChangedV1) -> Policy:
    return Policy.of(event.policy_version, {g.role: g.permissions for g in event.grants})


def event_of_policy(
    policy: Policy, *, changed_by: str, changed_role: str, at: datetime
) -> PermissionsChangedV1:
    grants = [RoleGrant(role=role, permissions=held) for role, held in policy.to_grants().items()]
    return PermissionsChangedV1(
        policy_version=policy.version,
        grants=grants,
        changed_by=changed_by,
        changed_role=changed_role,
        changed_at=at,
    )


@dataclass
class PolicyCache:
    """The policy in force for this process, in memory: no request reads the database for it.

    Loaded when the runtime starts (a database that does not answer then fails the start, like
    the indexes), reloaded every ``refresh_seconds`` by :meth:`run` (other replicas' changes)
    and at the next use after :meth:`invalidate` (this process applied or made a change). While
    the database does not answer, the last policy loaded stays in force (requests keep working
    during an outage, as token checks do).
    """

    db: Db
    refresh_seconds: float
    policy: Policy = DEFAULT_POLICY
    loaded: bool = False
    stale: bool = False

    async def current(self) -> Policy:
        if not self.loaded or self.stale or self.refresh_seconds <= 0:
            await self.refresh(required=not self.loaded)
        return self.policy

    async def refresh(self, *, required: bool = False) -> bool:
        """Reload from the database; False (the last policy kept) when it does not answer."""
        self.stale = False
        try:
            self.policy = await load_policy(self.db)
        except PyMongoError as exc:
            if required or not is_database_outage(exc):
                raise
            log.warning("permission policy not reloaded (database unreachable): %s", type(exc).__name__)
            return False
        self.loaded = True
        return True

    def invalidate(self) -> None:
        self.stale = True

    async def run(self) -> None:
        """Reload every ``refresh_seconds`` (the background job the runtimes start)."""
        while True:
            await asyncio.sleep(max(self.refresh_seconds, 0.5))
            await self.refresh()


def permissions_handler(cache: PolicyCache) -> Any:
    """The consumer handler for ``permissions.changed`` (added by the runtime when subscribed)."""

    async def on_permissions_changed(tx: Any, event: PermissionsChangedV1, envelope: Envelope) -> None:
        applied = await store_if_newer(tx.db, tx.session, policy_of_event(event))
        if applied:
            tx.after_commit.append(cache.invalidate)
        log.info(
            "permission policy v%d %s",
            event.policy_version,
            "applied" if applied else "ignored (not newer)",
            extra={"event_id": envelope.event_id},
        )

    return on_permissions_changed


@dataclass(frozen=True)
class PermissionGate:
    """Which roles may call a request's route in this service, under the current policy."""

    service: str
    cache: PolicyCache

    async def permission_and_holders(self, request: Request) -> tuple[str, frozenset[str]] | None:
        permission = permission_for(self.service, request.method, _raw_path(request))
        if permission is None:
            return None
        return permission, (await self.cache.current()).roles_with(permission)


def _raw_path(request: Request) -> str:
    """The path as the client encoded it (decoded once by the match, as the gateway does)."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).split(b"?", 1)[0].decode("latin-1")
    return normalize_path(request.url.path)


def gate_of(request: Request) -> PermissionGate | None:
    gate = getattr(request.app.state, "permission_gate", None)
    return gate if isinstance(gate, PermissionGate) else None


async def permitted_roles(request: Request, coded: frozenset[str]) -> frozenset[str]:
    """The roles a ``require_roles(*coded)`` lets through: the holders of the route's permission
    when the catalogue covers the route, else the coded roles."""
    gate = gate_of(request)
    if gate is None:
        return coded
    found = await gate.permission_and_holders(request)
    return coded if found is None else found[1]


async def enforce_permission(request: Request, roles: frozenset[str]) -> None:
    """403 unless one of ``roles`` holds the permission the request's route needs."""
    gate = gate_of(request)
    if gate is None:
        return
    found = await gate.permission_and_holders(request)
    if found is None:
        return
    permission, holders = found
    if not roles & holders:
        from fastapi import HTTPException, status

        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"requires the permission {permission!r} (held by {sorted(holders)}); you have {sorted(roles)}",
        )
