"""The events a consumer stores together in one transaction, as handlers see them.

Group commit (``crm_platform.consumer``) stores a fetched batch of one partition in ONE
transaction, each handler in offset order. A handler that reads or reserves something
per event can do it once for the whole batch instead: ``tx.batch`` names every event of
the batch and the one being handled, and :meth:`Batch.memo` keeps what was loaded for
the batch (e.g. the inbox items of every lead in it, with one ``$in`` query) for the
handlers after it. A record stored on its own is a batch of one, so a handler has one
code path.

A batch lives for one attempt of the transaction: a retried attempt gets a new one, so
nothing loaded in an aborted attempt is seen by the next.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crm_contracts import Envelope, Event

T = TypeVar("T")


@dataclass
class Batch:
    """``events`` in offset order; ``position`` is the index of the event being handled."""

    events: Sequence[tuple[Event, Envelope]]
    position: int = 0
    _memo: dict[str, Any] = field(default_factory=dict)

    def ahead(self) -> Sequence[tuple[Event, Envelope]]:
        """The event being handled and the ones after it."""
        return self.events[self.position :]

    async def memo(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s value, loaded once per batch (keys are namespaced by the caller)."""
        if key not in self._memo:
            self._memo[key] = await load()
        value: T = self._memo[key]
        return value

    def forget(self, key: str) -> None:
        """Drop what :meth:`memo` loaded under ``key`` (the next ``memo`` loads it again)."""
        self._memo.pop(key, None)

    def peek(self, key: str) -> Any | None:
        """What :meth:`memo` loaded under ``key``, or None if nothing was."""
        return self._memo.get(key)
