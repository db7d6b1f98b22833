"""Ids a service creates: one format everywhere.

A random UUID in its canonical 36-character form (``8-4-4-4-12`` hex digits).
Ids are opaque strings that are only stored and compared, so ids stored in an
earlier format (the 32 hex digits sales and the gateway once wrote) stay valid.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

IdFactory = Callable[[], str]


def new_id() -> str:
    return str(uuid.uuid4())
