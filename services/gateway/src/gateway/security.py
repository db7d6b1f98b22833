"""Password hashing with argon2id, off the event loop (hashing is deliberately slow).

Each argon2 hash takes about 64 MiB for a moment (argon2-cffi's default RFC 9106
profile), so at most ``max_concurrent`` run at once: a burst of logins queues up
instead of exhausting the gateway's memory. None runs at start-up: the hash a login for an
unknown username is verified against is :data:`DUMMY_HASH`, made once with the default
parameters (hashing it at each start took the gateway's resident memory from ~100 to ~164 MB
for a moment, its high-water mark for the rest of its life).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

DUMMY_PASSWORD = "dummy password for timing equalisation"  # never anyone's: no user, never ok
# DUMMY_PASSWORD hashed with argon2-cffi's default parameters (RFC 9106's low-memory profile);
# the salt is no secret (neither is the password). A hasher with other parameters hashes its
# own at start-up, so an unknown username always costs what a known one does.
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$YFo5jIIrhWCYc2ZElXWGtw$eSJSDsQANoEBEEU/0As6y/Gl6FG3IjLziBbg2VnjHnY"
)


@dataclass
class Passwords:
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    max_concurrent: int = 4

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrent)
        # Verified against when the username is unknown, so both failures cost the same time.
        self._dummy_hash = DUMMY_HASH
        if self.hasher.check_needs_rehash(DUMMY_HASH):
            self._dummy_hash = self.hasher.hash(DUMMY_PASSWORD)

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
