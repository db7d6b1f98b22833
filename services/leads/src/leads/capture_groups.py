"""Group commit for single captures (``POST /leads``): one transaction for the captures that
arrived while the previous one was being committed.

A capture alone costs a MongoDB transaction (the upsert, the person's key, the audit entry,
the outbox row, a commit waiting for the journal): under many clients mongod's share of that
was a quarter of the CPU per capture, and leads' pymongo round trips another third
(docs/performance.md, "Eighth session, capture"). Here a capture that finds no transaction of
this kind in flight runs alone, as before (:func:`leads.handlers.capture_lead`); one that
arrives while one is in flight waits, and when it ends, everything that waited goes in ONE
transaction (:func:`leads.handlers.capture_together`). Each request keeps everything its
capture had alone: its verdict (201 new / 200 merged), its ``lead.captured`` in its own trace,
its audit entry naming its own user, route, request and correlation ids, the person's key
(crypto-shredding), and the outbox row committed with the lead.

A group holds each email once: a second capture of an email waits for the next group (it
merges into what the first stored, in arrival order). A request with an ``Idempotency-Key``
runs alone (its key commits with its own effect). A group that fails on a database error
fails every request in it (the same error each would have had: nothing was committed); any
other error runs each of its captures alone, so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass

from crm_platform import audit
from crm_platform.custom_fields import FieldSet
from crm_platform.deadline import request_db_deadline
from crm_platform.idempotency import current_claim
from crm_platform.mongo import audit_context
from pymongo.errors import PyMongoError

from leads import handlers
from leads.domain.leads import Capture, CaptureOutcome, normalize_email

log = logging.getLogger("leads.capture_groups")

# At most this many captures per transaction (the rest wait for the next).
MOST = 64


@dataclass
class _Waiting:
    capture: Capture
    fields: FieldSet
    audit: audit.Context  # whose capture it is, resolved in its request
    context: contextvars.Context  # its request's context (trace), for its events
    done: asyncio.Future[CaptureOutcome]


class CaptureGroups:
    """``capture`` answers as :func:`leads.handlers.capture_lead` would; concurrent calls share
    transactions. ``source`` names the service in audit entries (the store's source)."""

    def __init__(self, uow: handlers.Uow, source: str, most: int = MOST) -> None:
        self.uow = uow
        self.source = source
        self.most = most
        self.groups = 0  # transactions run for two or more captures (tests, the bench)
        self._busy = False
        self._waiting: list[_Waiting] = []
        self._drainer: asyncio.Task[None] | None = None

    async def capture(self, capture: Capture, fields: FieldSet) -> CaptureOutcome:
        if current_claim.get() is not None:  # its Idempotency-Key commits with its own effect
            return await handlers.capture_lead(self.uow, capture, fields)
        if not self._busy:  # nothing in flight: alone, at once
            self._busy = True
            try:
                return await handlers.capture_lead(self.uow, capture, fields)
            finally:
                self._next()
        loop = asyncio.get_running_loop()
        waiting = _Waiting(
            capture, fields, audit_context(self.source), contextvars.copy_context(), loop.create_future()
        )
        self._waiting.append(waiting)
        return await waiting.done

    def _next(self) -> None:
        """After a transaction: the waiting captures' turn (in a context of their own, no request's)."""
        if self._waiting:
            self._drainer = asyncio.create_task(self._drain(), context=contextvars.Context())
        else:
            self._busy = False

    async def _drain(self) -> None:
        group: list[_Waiting] = []
        try:
            while group := self._take():
                await self._run(group)
        finally:
            self._busy = False
            for left in [*group, *self._waiting]:  # only when cancelled (shutting down)
                if not left.done.done():
                    left.done.cancel()
            self._waiting = []

    def _take(self) -> list[_Waiting]:
        """The next group in arrival order: at most ``most``, the first one's custom field set,
        each email once (a later capture of an email, or of one passed over, waits: its order
        per email is kept)."""
        group: list[_Waiting] = []
        rest: list[_Waiting] = []
        emails: set[str] = set()
        for waiting in self._waiting:
            if waiting.done.cancelled():
                continue  # its request is gone before its capture began
            email = normalize_email(waiting.capture.email)
            fits = len(group) < self.most and (not group or waiting.fields == group[0].fields)
            (group if fits and email not in emails else rest).append(waiting)
            emails.add(email)
        self._waiting = rest
        return group

    async def _run(self, group: list[_Waiting]) -> None:
        if len(group) == 1:
            await self._alone(group[0])
            return
        token = request_db_deadline.set(_deadline(group))
        try:
            self.groups += 1
            outcomes = await handlers.capture_together(
                self.uow,
                [w.capture for w in group],
                group[0].fields,
                [w.audit for w in group],
                [w.context for w in group],
            )
        except PyMongoError as exc:  # nothing committed: each request fails as it would alone
            for waiting in group:
                _settle(waiting, error=exc)
            return
        except Exception:
            log.exception("a group of %d captures failed; running each alone", len(group))
            for waiting in group:
                await self._alone(waiting)
            return
        finally:
            request_db_deadline.reset(token)
        for waiting, outcome in zip(group, outcomes, strict=True):
            _settle(waiting, outcome=outcome)

    async def _alone(self, waiting: _Waiting) -> None:
        """One capture by the single path, in its own request's context (its audit, its trace)."""
        task = asyncio.create_task(
            handlers.capture_lead(self.uow, waiting.capture, waiting.fields), context=waiting.context
        )
        try:
            _settle(waiting, outcome=await task)
        except Exception as exc:  # noqa: BLE001 - its request raises it, as it would have alone
            _settle(waiting, error=exc)


def _deadline(group: list[_Waiting]) -> float | None:
    """The group's database deadline: the shortest of its requests' (None: none had one)."""
    deadlines = [d for w in group if (d := w.context.get(request_db_deadline)) is not None]
    return min(deadlines) if deadlines else None


def _settle(
    waiting: _Waiting, *, outcome: CaptureOutcome | None = None, error: BaseException | None = None
) -> None:
    if waiting.done.done():  # its request was cancelled meanwhile
        return
    if outcome is not None:
        waiting.done.set_result(outcome)
    else:
        waiting.done.set_exception(error or RuntimeError("a capture settled without an outcome"))
