"""Domain errors every service raises; the app factory maps them to 4xx JSON bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WaitQueueTimeoutError


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


class ErrorBody(BaseModel):
    """Every error answer of every service (documented on each route's OpenAPI responses)."""

    error: str = Field(description="Machine-readable code, e.g. not_found, validation_error")
    message: str = Field(description="What went wrong, for a person")
    request_id: str | None = Field(description="Quote it to support; also in the X-Request-ID header")
    details: dict[str, Any] | None = Field(default=None, description="Domain errors: what the rule names")
    fields: list[dict[str, Any]] | None = Field(
        default=None, description="422 validation errors: one entry per field at fault"
    )


def is_database_outage(exc: BaseException) -> bool:
    """True when a PyMongo error means "the database cannot answer now", not a bug.

    Unreachable or lost servers (``ConnectionFailure``: server selection,
    network errors and timeouts, a stepped-down primary), the request deadline
    reached (client-side operation timeout or the server's ``maxTimeMS``), and
    errors the driver itself labels as retryable. Those become 503 with
    ``Retry-After``; any other PyMongo error is a bug (500).
    """
    if not isinstance(exc, PyMongoError):
        return False
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WaitQueueTimeoutError):
        return True
    if exc.timeout:
        return True
    return any(exc.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError"))
