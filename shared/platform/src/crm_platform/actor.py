"""The acting user as handlers and entities see it: no token, no web framework.

The API turns the verified token (:class:`crm_platform.auth.Principal`) into an
:class:`Actor` (``crm_platform.routes.CurrentActor``); everything below the API
takes an ``Actor``. ``user_id`` (the token's ``sub``) is the identity every owner,
roster entry and audit field stores and every check compares; ``username`` is for
display and logs only and never decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Actor:
    user_id: str
    username: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, user_id: str, roles: Iterable[str] = (), username: str = "") -> Actor:
        return cls(user_id, username, frozenset(roles))

    def has_any(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def display_name(self) -> str:
        return self.username or self.user_id
