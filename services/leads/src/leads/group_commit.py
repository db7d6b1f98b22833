"""Group commit: one transaction for the single requests of a kind that arrived while the
previous one was being committed (leads' captures, :mod:`leads.capture_groups`, and single
behaviours, :mod:`leads.behaviour_groups`).

A request that finds no transaction of its kind in flight runs alone, as before (``alone``);
one that arrives while one is in flight waits, and when it ends, everything that waited goes
in ONE transaction (``together``). Each request keeps what it had alone (its answer, its
events in its own trace, its audit entries naming its own request); only the round trips and
the commit are shared. A group holds each ``group_key`` once (a second request for the same
record waits for the next group, so its order per record is kept). A group that fails on a
database error fails every request in it (the same error each would have had: nothing was
committed); any other error runs each of its requests alone, so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from crm_platform import audit
from crm_platform.deadline import request_db_deadline
from crm_platform.mongo import audit_context
from pymongo.errors import PyMongoError

log = logging.getLogger("leads.group_commit")

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class Waiting(Generic[In, Out]):
    item: In
    audit: audit.Context  # whose request it is, resolved in its request
    context: contextvars.Context  # its request's context (trace, Idempotency-Key claim)
    done: asyncio.Future[Out]


class GroupCommit(Generic[In, Out]):
    """``submit`` answers as ``alone`` would; concurrent calls share transactions. ``source``
    names the service in audit entries (the store's source). Subclasses say how one request
    runs alone, how a group runs together, and what a group holds once."""

    def __init__(self, source: str, most: int) -> None:
        self.source = source
        self.most = most
        self.groups = 0  # transactions run for two or more requests (tests, the bench)
        self._busy = False
        self._waiting: list[Waiting[In, Out]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def alone(self, item: In) -> Out:
        raise NotImplementedError

    async def together(self, group: Sequence[Waiting[In, Out]]) -> Sequence[Out]:
        raise NotImplementedError

    def group_key(self, item: In) -> Hashable:
        """What a group holds at most once (its requests' order per key is kept)."""
        raise NotImplementedError

    def joins(self, first: In, item: In) -> bool:
        """Whether ``item`` may share a transaction with a group whose first is ``first``."""
        return True

    def runs_alone(self, item: In) -> bool:
        """Whether this request always runs by itself (e.g. its key must commit with its own effect)."""
        return False

    async def submit(self, item: In) -> Out:
        if self.runs_alone(item):
            return await self.alone(item)
        if not self._busy:  # nothing in flight: alone, at once
            self._busy = True
            try:
                return await self.alone(item)
            finally:
                self._next()
        loop = asyncio.get_running_loop()
        waiting = Waiting(item, audit_context(self.source), contextvars.copy_context(), loop.create_future())
        self._waiting.append(waiting)
        return await waiting.done

    def _next(self) -> None:
        """After a transaction: the waiting requests' turn (in a context of their own, no request's)."""
        if self._waiting:
            self._drainer = asyncio.create_task(self._drain(), context=contextvars.Context())
        else:
            self._busy = False

    async def _drain(self) -> None:
        group: list[Waiting[In, Out]] = []
        try:
            while group := self._take():
                await self._run(group)
        finally:
            self._busy = False
            for left in [*group, *self._waiting]:  # only when cancelled (shutting down)
                if not left.done.done():
                    left.done.cancel()
            self._waiting = []

    def _take(self) -> list[Waiting[In, Out]]:
        """The next group in arrival order: at most ``most``, each joining the first, each key
        once (a later request for a key, or one passed over, waits: its order per key is kept)."""
        group: list[Waiting[In, Out]] = []
        rest: list[Waiting[In, Out]] = []
        keys: set[Hashable] = set()
        for waiting in self._waiting:
            if waiting.done.cancelled():
                continue  # its request is gone before its work began
            key = self.group_key(waiting.item)
            fits = len(group) < self.most and (not group or self.joins(group[0].item, waiting.item))
            (group if fits and key not in keys else rest).append(waiting)
            keys.add(key)
        self._waiting = rest
        return group

    async def _run(self, group: list[Waiting[In, Out]]) -> None:
        if len(group) == 1:
            await self._alone(group[0])
            return
        token = request_db_deadline.set(_deadline(group))
        try:
            self.groups += 1
            outcomes = await self.together(group)
        except PyMongoError as exc:  # nothing committed: each request fails as it would alone
            for waiting in group:
                _settle(waiting, error=exc)
            return
        except Exception:
            log.info("a group of %d requests failed; running each alone", len(group), exc_info=True)
            for waiting in group:
                await self._alone(waiting)
            return
        finally:
            request_db_deadline.reset(token)
        for waiting, outcome in zip(group, outcomes, strict=True):
            _settle(waiting, outcome=outcome)

    async def _alone(self, waiting: Waiting[In, Out]) -> None:
        """One request by the single path, in its own request's context (its audit, its trace)."""
        task = asyncio.create_task(self.alone(waiting.item), context=waiting.context)
        try:
            _settle(waiting, outcome=await task)
        except Exception as exc:  # noqa: BLE001 - its request raises it, as it would have alone
            _settle(waiting, error=exc)


def _deadline(group: Sequence[Waiting[In, Out]]) -> float | None:
    """The group's database deadline: the shortest of its requests' (None: none had one)."""
    deadlines = [d for w in group if (d := w.context.get(request_db_deadline)) is not None]
    return min(deadlines) if deadlines else None


def _settle(
    waiting: Waiting[In, Out], *, outcome: Out | None = None, error: BaseException | None = None
) -> None:
    if waiting.done.done():  # its request was cancelled meanwhile
        return
    if error is None:
        waiting.done.set_result(outcome)  # type: ignore[arg-type]
    else:
        waiting.done.set_exception(error)
