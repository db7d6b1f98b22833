"""Ids a service creates: one format everywhere.

A time-ordered UUID (version 7, RFC 9562: the creation time in milliseconds, then 74 random
bits) in its canonical 36-character form (``8-4-4-4-12`` hex digits). Ids are opaque strings
that are only stored and compared, so ids stored in an earlier format (the random version-4
UUIDs made before 2026-12-06, the 32 hex digits sales and the gateway once wrote) stay valid.
Time-ordered, because ids are the keys of the largest indexes (every collection's ``_id``,
the indexes ending in ``_id``, the audit log's by record): a new id is inserted at the index's
edge instead of on a random page, which kept mongod writing back whole pages of indexes that
outgrew its dirty-cache share (docs/performance.md, "Tenth session, import"). An id tells when
it was made, as the record's own timestamps do. The random bytes are drawn from the OS a block
of ids at a time (``crm_contracts.uuids``).
"""

from __future__ import annotations

from collections.abc import Callable

from crm_contracts.uuids import uuid7_str

IdFactory = Callable[[], str]


def new_id() -> str:
    return uuid7_str()
