"""The revocation list the gateway keeps in memory and publishes to every service.

Logout, deactivation and changes of roles or password revoke tokens; the list is
kept in memory, reloaded from the database every ``CRM_REVOCATION_REFRESH_SECONDS``
and published (``GET /internal/revocations``), so checking a token never reads the
database (the gateway keeps authenticating while it is down). A revocation made in
this process applies at once (:meth:`RevocationCache.remember`) and is kept over
reloads that may have read the database before it was written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from crm_contracts import utcnow
from crm_platform.auth import CLOCK_SKEW_SECONDS, RevocationList, TokenVerifier
from pymongo.errors import PyMongoError

from gateway.repository import RevocationRepository

log = logging.getLogger("crm.gateway.accounts")

LOCAL_GRACE_SECONDS = 30.0  # local revocations kept over reloads that may predate them


@dataclass
class RevocationCache:
    verifier: TokenVerifier  # its ``revocations`` is the list every token check reads
    repository: RevocationRepository
    access_ttl: timedelta
    _local: RevocationList = field(default_factory=RevocationList)
    _local_at: dict[str, float] = field(default_factory=dict)
    _reload_failing: bool = False

    def remember(self, *, users: dict[str, int] | None = None, tokens: dict[str, int] | None = None) -> None:
        """Apply a revocation made here at once (the next reload from the database confirms it)."""
        now = time.monotonic()
        for user_id, not_before in (users or {}).items():
            self._local.users[user_id] = not_before
            self.verifier.revocations.users[user_id] = not_before
            self._local_at[f"u:{user_id}"] = now
        for jti, exp in (tokens or {}).items():
            self._local.tokens[jti] = exp
            self.verifier.revocations.tokens[jti] = exp
            self._local_at[f"t:{jti}"] = now

    async def reload(self) -> None:
        """Rebuild the in-memory list from the database (raises when the database is down)."""
        now = utcnow()
        window = int(self.access_ttl.total_seconds()) + CLOCK_SKEW_SECONDS
        users, tokens = await self.repository.load(users_since=int(now.timestamp()) - window, now=now)
        fresh = RevocationList(users, tokens)
        self._forget_local_older_than(time.monotonic() - LOCAL_GRACE_SECONDS)
        fresh.users.update({u: max(t, fresh.users.get(u, 0)) for u, t in self._local.users.items()})
        fresh.tokens.update(self._local.tokens)
        self.verifier.revocations.replace(fresh)

    def _forget_local_older_than(self, cutoff: float) -> None:
        for key, at in list(self._local_at.items()):
            kind, _, ident = key.partition(":")
            if at < cutoff:
                del self._local_at[key]
                (self._local.users if kind == "u" else self._local.tokens).pop(ident, None)

    async def keep_fresh(self, every: float) -> None:
        """Background job: reload every ``every`` seconds; with the database down, keep the last list."""
        while True:
            await asyncio.sleep(every)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the reload finishes, and the job would never stop.
                async with asyncio.timeout(max(2.0, every * 2)):
                    await self.reload()
            except (PyMongoError, TimeoutError) as exc:
                if not self._reload_failing:
                    log.warning("revocation list not reloaded (database unreachable): %s", type(exc).__name__)
                self._reload_failing = True
                continue
            if self._reload_failing:
                log.info("revocation list reloaded again")
            self._reload_failing = False
