"""Password and username rules for gateway accounts (hashing itself is in ``security``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{2,63}$")
MAX_PASSWORD_LENGTH = 256  # argon2 takes any length; the cap keeps hashing cost bounded


class PolicyViolation(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def username_key(username: str) -> str:
    """The uniqueness key: usernames are unique case-insensitively."""
    return username.strip().casefold()


def check_username(username: str) -> str:
    """The username as it will be stored (trimmed), or :class:`PolicyViolation`."""
    name = username.strip()
    if not USERNAME_RE.match(name):
        raise PolicyViolation(
            "username",
            "username must be 3-64 characters: letters, digits and . _ @ -, starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 12
    max_length: int = MAX_PASSWORD_LENGTH

    def check(self, password: str, *, username: str | None = None) -> None:
        if len(password) < self.min_length:
            raise PolicyViolation("password", f"password must be at least {self.min_length} characters long")
        if len(password) > self.max_length:
            raise PolicyViolation("password", f"password must be at most {self.max_length} characters long")
        if not password.strip():
            raise PolicyViolation("password", "password must not be blank")
        if len(set(password)) < 4:
            raise PolicyViolation("password", "password must use at least 4 different characters")
        if username is not None and username_key(username) == password.strip().casefold():
            raise PolicyViolation("password", "password must not be the username")
