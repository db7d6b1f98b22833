"""leads.behaviour_groups on the fakes: single behaviours that wait for a transaction go together,
each lead once per group, in arrival order, each by its own user; the first behaviour of a quiet
moment runs alone."""

from __future__ import annotations

import asyncio
from typing import Any

from crm_contracts.events.common import Behaviour
from crm_contracts.events.leads import LeadQualifiedV1
from crm_platform.actor import Actor
from leads import handlers
from leads.behaviour_groups import BehaviourGroups
from leads.domain.leads import BehaviourInput, Capture
from leads.fakes import HeldFirst, until

MIA, MAX = Actor.of("user-mia", ["marketing"], "mia"), Actor.of("user-max", ["marketing"], "max")


async def test_waiting_behaviours_go_together_each_lead_once_in_arrival_order() -> None:
    uow = HeldFirst(held=False)
    ids = [
        (await handlers.capture_lead(uow, Capture(f"{n}@x.com", "Ada", "webinar", True))).lead.id
        for n in range(3)
    ]
    uow.held, uow.runs = True, 0
    groups = BehaviourGroups(uow, "leads")
    signup = Behaviour("trial_signup")
    first = asyncio.create_task(groups.record(BehaviourInput(ids[0], Behaviour("form_submit"), by=MIA)))
    await until(lambda: uow.runs == 1)
    sent = [(ids[1], MIA), (ids[2], MAX), (ids[1], MAX), (ids[0], MIA)]
    waiting = [asyncio.create_task(groups.record(BehaviourInput(i, signup, by=who))) for i, who in sent]
    await until(lambda: len(groups._waiting) == 4)
    uow.release.set()
    results: list[Any] = await asyncio.gather(first, *waiting)

    assert uow.runs == 3, (
        "alone; then ids[1], ids[2], ids[0] together; then ids[1]'s second in the next group"
    )
    assert groups.groups == 1
    assert [r.lead.id for r in results] == [ids[0], ids[1], ids[2], ids[1], ids[0]]
    assert [r.lead.behaviour_totals.get("trial_signup", 0) for r in results[1:]] == [1, 1, 2, 1]
    by_user = {r.id: r.recorded_by.username for r in uow.inner.unit.behaviours.items.values()}
    assert [by_user[r.behaviour_id] for r in results[1:]] == ["mia", "max", "max", "mia"], (
        "each by its own user"
    )
    qualified = uow.inner.unit.emitted(LeadQualifiedV1)
    assert sorted(e.lead_id for e in qualified) == sorted(r.lead.id for r in results if r.qualified_now)
