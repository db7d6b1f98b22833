"""Group commit for single captures (``POST /leads``): one transaction for the captures that
arrived while the previous one was being committed (:mod:`leads.group_commit`).

A capture alone costs a MongoDB transaction (the upsert, the audit entry, the outbox row, a
commit waiting for the journal; the person's key too until the twenty-first session): under
many clients mongod's share of that was a quarter of the CPU per capture, and leads' pymongo
round trips another third (docs/performance.md, "Eighth session, capture"). Here a capture
that finds no transaction of this kind in flight runs alone, as before
(:func:`leads.handlers.capture_lead`); one that arrives while one is in flight waits, and when
it ends, everything that waited goes in ONE transaction (:func:`leads.handlers.capture_together`).
Each request keeps everything its capture had alone: its verdict (201 new / 200 merged), its
``lead.captured`` in its own trace, its audit entry naming its own user, route, request and
correlation ids, and the outbox row committed with the lead.

A group holds each email once: a second capture of an email waits for the next group (it
merges into what the first stored, in arrival order). A request with an ``Idempotency-Key``
runs alone (its key commits with its own effect). A group that fails on a database error
fails every request in it (the same error each would have had: nothing was committed); any
other error runs each of its captures alone, so each gets its own answer.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from crm_platform.custom_fields import FieldSet
from crm_platform.idempotency import current_claim

from leads import handlers
from leads.domain.leads import Capture, CaptureOutcome, normalize_email
from leads.group_commit import GroupCommit, Waiting

# At most this many captures per transaction (the rest wait for the next).
MOST = 64


@dataclass(frozen=True)
class _Capture:
    capture: Capture
    fields: FieldSet


class CaptureGroups(GroupCommit[_Capture, CaptureOutcome]):
    """``capture`` answers as :func:`leads.handlers.capture_lead` would; concurrent calls share
    transactions. ``source`` names the service in audit entries (the store's source)."""

    def __init__(self, uow: handlers.Uow, source: str, most: int = MOST) -> None:
        super().__init__(source, most)
        self.uow = uow

    async def capture(self, capture: Capture, fields: FieldSet) -> CaptureOutcome:
        return await self.submit(_Capture(capture, fields))

    def runs_alone(self, item: _Capture) -> bool:
        return current_claim.get() is not None  # its Idempotency-Key commits with its own effect

    def group_key(self, item: _Capture) -> Hashable:
        return normalize_email(item.capture.email)

    def joins(self, first: _Capture, item: _Capture) -> bool:
        return item.fields == first.fields  # one custom field set per group

    async def alone(self, item: _Capture) -> CaptureOutcome:
        return await handlers.capture_lead(self.uow, item.capture, item.fields)

    async def together(self, group: Sequence[Waiting[_Capture, CaptureOutcome]]) -> Sequence[CaptureOutcome]:
        return await handlers.capture_together(
            self.uow,
            [w.item.capture for w in group],
            group[0].item.fields,
            [w.audit for w in group],
            [w.context for w in group],
        )
