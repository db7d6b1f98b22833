"""Password hashing with argon2id, off the event loop (hashing is deliberately slow).

Each argon2 hash takes about 64 MiB for a moment (argon2-cffi's default RFC 9106
profile), so at most ``max_concurrent`` run at once: a burst of logins queues up
instead of exhausting the gateway's memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass
class Passwords:
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    max_concurrent: int = 4

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrent)
        # Verified against when the username is unknown, so both failures cost the same time.
        self._dummy_hash = self.hasher.hash("dummy password for timing equalisation")

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        target = password_hash or self._dummy_hash
        try:
            async with self._slots:
                ok = await asyncio.to_thread(self.hasher.verify, target, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self.hasher.check_needs_rehash(password_hash)
