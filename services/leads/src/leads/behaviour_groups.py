"""Group commit for single behaviours (``POST /leads/{id}/behaviours``): one transaction for the
behaviours that arrived while the previous one was being committed (:mod:`leads.group_commit`).

A single qualifying behaviour alone costs leads about ten mongod round trips (its key's claim,
the lead's read, the behaviour's insert, the lead's write, the audit entry, the person's key,
the outbox, ``handoffs_sent``, the commit, the key's answer) at a few hundred microseconds of
client CPU each: at 25 handoffs a second on two cores the p99 was a queue for the cores
(docs/performance.md, "Thirteenth session, latency"). Here a behaviour that finds none in
flight runs alone, as before (:func:`leads.handlers.record_behaviour`); those that arrive while
one is in flight go together when it ends (:func:`leads.handlers.record_together`), each with
its own answer, events in its own trace, audit entries naming its own request, and its
``Idempotency-Key`` (the derived one too) inserted by the group's transaction, so it commits
with its own effect (``crm_platform.idempotency.group_claims``). A group holds each lead once
(a second behaviour of a lead waits for the next group: the lead's order is kept). A key found
taken, a lead that does not exist or any other error but a database's runs each of the group's
behaviours alone, so each gets the answer it would have had.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from crm_platform.idempotency import current_claim, group_claims

from leads import handlers
from leads.domain.leads import BehaviourInput
from leads.group_commit import GroupCommit, Waiting

# At most this many behaviours per transaction (the rest wait for the next).
MOST = 64


class BehaviourGroups(GroupCommit[BehaviourInput, handlers.BehaviourResult]):
    """``record`` answers as :func:`leads.handlers.record_behaviour` would (``item.by``: the
    user); concurrent calls share transactions."""

    def __init__(self, uow: handlers.Uow, source: str, most: int = MOST) -> None:
        super().__init__(source, most)
        self.uow = uow

    async def record(self, item: BehaviourInput) -> handlers.BehaviourResult:
        if item.by is None:
            raise ValueError("a behaviour is recorded by a user")
        return await self.submit(item)

    def group_key(self, item: BehaviourInput) -> Hashable:
        return item.lead_id

    async def alone(self, item: BehaviourInput) -> handlers.BehaviourResult:
        assert item.by is not None
        return await handlers.record_behaviour(
            self.uow,
            item.lead_id,
            item.behaviour,
            occurred_at=item.occurred_at,
            meta=item.meta,
            external_id=item.external_id,
            actor=item.by,
        )

    async def together(
        self, group: Sequence[Waiting[BehaviourInput, handlers.BehaviourResult]]
    ) -> Sequence[handlers.BehaviourResult]:
        claims = tuple(c for w in group if (c := w.context.get(current_claim)) is not None)
        token = group_claims.set(claims)  # each request's key commits with its own effect
        try:
            return await handlers.record_together(
                self.uow, [w.item for w in group], [w.audit for w in group], [w.context for w in group]
            )
        finally:
            group_claims.reset(token)
