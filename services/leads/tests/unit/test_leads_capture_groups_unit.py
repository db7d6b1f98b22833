"""leads.capture_groups on the fakes: captures that wait for a transaction go together, each
email once per group, in arrival order; the first capture of a quiet moment runs alone."""

from __future__ import annotations

import asyncio
from typing import Any

from crm_contracts.events.leads import LeadCapturedV1
from leads.capture_groups import CaptureGroups
from leads.domain.leads import NO_CUSTOM_FIELDS, Capture
from leads.fakes import HeldFirst, until


def capture(email: str) -> Capture:
    return Capture(email=email, name="Ada", source_channel="webinar", marketing_email=True)


async def test_waiting_captures_go_together_each_email_once_in_arrival_order() -> None:
    uow = HeldFirst()
    groups = CaptureGroups(uow, "leads")
    first = asyncio.create_task(groups.capture(capture("first@x.com"), NO_CUSTOM_FIELDS))
    await until(lambda: uow.runs == 1)
    emails = ["a@x.com", "b@x.com", "A@X.com", "c@x.com"]
    waiting = [asyncio.create_task(groups.capture(capture(e), NO_CUSTOM_FIELDS)) for e in emails]
    await until(lambda: all(not t.done() for t in waiting) and len(groups._waiting) == 4)
    uow.release.set()
    outcomes: list[Any] = await asyncio.gather(first, *waiting)

    assert [o.merged for o in outcomes] == [False, False, False, True, False]
    assert outcomes[3].lead.id == outcomes[1].lead.id, "the second capture of a@x.com merged into the first"
    assert uow.runs == 3, "alone; then a, b, c together; then the repeated email in the next group"
    assert groups.groups == 1
    captured = uow.inner.unit.emitted(LeadCapturedV1)
    assert sorted(e.lead_id for e in captured) == sorted(o.lead.id for o in outcomes)
    assert [e.merged for e in captured if e.lead_id == outcomes[1].lead.id] == [False, True]
