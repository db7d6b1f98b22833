"""Domain errors every service raises; the app factory maps them to 4xx JSON bodies."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status_code = 422
    code = "rule_violation"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class RuleViolation(DomainError):
    status_code = 422
    code = "rule_violation"
