"""Ids a service creates: one format everywhere.

A random UUID in its canonical 36-character form (``8-4-4-4-12`` hex digits).
Ids are opaque strings that are only stored and compared, so ids stored in an
earlier format (the 32 hex digits sales and the gateway once wrote) stay valid. The random
bytes are drawn from the OS a block of ids at a time (``crm_contracts.uuids``).
"""

from __future__ import annotations

from collections.abc import Callable

from crm_contracts.uuids import uuid4_str

IdFactory = Callable[[], str]


def new_id() -> str:
    return uuid4_str()
