"""The database deadline of the HTTP request being served, if any.

Set by the HTTP edge for each request (``CRM_DB_DEADLINE_SECONDS``) and applied by
:meth:`crm_platform.mongo.Store.transaction` to the whole transaction, retries and
commit included. Consumers and background jobs run without it: nobody waits on
them, and their transient errors are retried with backoff instead.
"""

from __future__ import annotations

from contextvars import ContextVar

request_db_deadline: ContextVar[float | None] = ContextVar("request_db_deadline", default=None)
