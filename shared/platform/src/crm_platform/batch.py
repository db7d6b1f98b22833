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

Loads that do not depend on each other can run side by side: :meth:`Batch.preload` starts
one (a read of the transaction) and the :meth:`Batch.memo` that asks for it awaits it. Only
once the transaction has begun (``begun``: its first command answered; a command sent beside
the first could reach the server before it and find no transaction), so the consumer sets it
after the ledger insert. MongoDB runs one command of a session at a time: what is saved is the
round trip between them (a lone handoff's held key and the lead's inbox items: one serial round
trip fewer before it is stored; docs/performance.md, nineteenth session, p99sales).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crm_contracts import Envelope, Event

T = TypeVar("T")
H = TypeVar("H", bound=Callable[..., Any])
# What a handler's events will load, started by the consumer beside its other reads: given the
# transaction (``crm_platform.mongo.Tx``), it calls :meth:`Batch.preload` on ``tx.batch``.
Preload = Callable[[Any], None]


def with_preload(handler: H, preload: Preload) -> H:
    """``handler``, naming the loads it will ask its batch for (``preload``): the consumer
    starts them beside its own reads of the event (``crm_platform.shredding.unsealing``)."""
    vars(handler)["preload"] = preload
    return handler


def preload_of(handler: Callable[..., Any]) -> Preload | None:
    """The loads ``handler`` names (:func:`with_preload`), or None."""
    preload: Preload | None = getattr(handler, "__dict__", {}).get("preload")
    return preload


@dataclass
class Batch:
    """``events`` in offset order; ``position`` is the index of the event being handled."""

    events: Sequence[tuple[Event, Envelope]]
    position: int = 0
    # The transaction's first command has been answered: loads may run beside each other.
    begun: bool = False
    _memo: dict[str, Any] = field(default_factory=dict)
    _loading: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _started: list[asyncio.Future[Any]] = field(default_factory=list)

    def ahead(self) -> Sequence[tuple[Event, Envelope]]:
        """The event being handled and the ones after it."""
        return self.events[self.position :]

    async def memo(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s value, loaded once per batch (keys are namespaced by the caller)."""
        if key not in self._memo:
            loading = self._loading.get(key)
            loaded = await (loading if loading is not None else load())
            if self._loading.get(key) is loading:  # not forgotten meanwhile
                self._loading.pop(key, None)
                self._memo[key] = loaded
            else:
                return await self.memo(key, load)
        value: T = self._memo[key]
        return value

    def preload(self, key: str, load: Callable[[], Awaitable[Any]]) -> None:
        """Start ``load()`` now, beside what the caller awaits next; the :meth:`memo` of ``key``
        awaits it. Nothing before the transaction has ``begun`` (the memo then loads as asked),
        or when ``key`` is loaded or loading already."""
        if not self.begun or key in self._memo or key in self._loading:
            return
        task = asyncio.ensure_future(load())
        self._loading[key] = task
        self._started.append(task)

    async def settle(self, *, failed: bool = False) -> None:
        """Every preload finished before the transaction commits or aborts (none may reach the
        server after it): awaited, or cancelled when the attempt ``failed``; their errors were
        the memo's to raise, so they are not raised again here."""
        started, self._started = self._started, []
        if failed:
            for task in started:
                task.cancel()
        if started:
            await asyncio.gather(*started, return_exceptions=True)

    def forget(self, key: str) -> None:
        """Drop what :meth:`memo` loaded under ``key`` (the next ``memo`` loads it again); a
        preload under way is not used (it may not see the change that made the caller forget)."""
        self._memo.pop(key, None)
        self._loading.pop(key, None)

    def peek(self, key: str) -> Any | None:
        """What :meth:`memo` loaded under ``key``, or None if nothing was."""
        return self._memo.get(key)
