"""A bulk path's events share one outbox row (``emit(batched=True)``); everything else is a row
per event, in emission order; handoffs are never batched (their receipts find them by id)."""

from __future__ import annotations

import uuid
from typing import Any

from crm_contracts import envelope_for, utcnow
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.events.leads import LeadQualifiedV1, LeadStatusChangedV1
from crm_platform.mongo import BATCH_EVENTS, Tx, outbox_doc, outbox_rows, row_items


def item(n: int) -> dict[str, Any]:
    event = LeadStatusChangedV1(lead_id=f"lead-{n}", status="nurturing", source_channel="web")
    return outbox_doc(envelope_for(event, source="leads", correlation_id=f"lead-{n}"))


def test_neighbouring_batched_events_share_one_row_in_emission_order() -> None:
    items = [item(n) for n in range(6)]
    rows = outbox_rows(items, [False, True, True, True, False, True])
    assert row_items(rows[0]) == [items[0]]
    batch = rows[1]
    assert [i["event_id"] for i in batch[BATCH_EVENTS]] == [i["event_id"] for i in items[1:4]]
    assert batch["count"] == 3
    assert batch["published"] is False
    assert batch["event_id"] == f"batch:{items[1]['event_id']}"
    assert batch["created_at"] == items[1]["created_at"]
    assert all("published" not in i and "created_at" not in i for i in batch[BATCH_EVENTS])
    assert rows[2] is items[4], "a single event stays a row of its own"
    assert rows[3] is items[5], "a run of one batched event is a plain row"
    flat = [i["event_id"] for r in rows for i in row_items(r)]
    assert flat == [i["event_id"] for i in items], "every event once, in emission order"


def test_a_handoff_is_never_batched() -> None:
    tx = Tx(None, None, "leads")  # type: ignore[arg-type]  # emit touches neither
    qualified = LeadQualifiedV1(
        lead_id=f"lead-{uuid.uuid4().hex[:6]}",
        contact=Contact(name="Ann", email="ann@example.com"),
        company="Co",
        score=50.0,
        threshold=40.0,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=50.0)],
        source_channel="web_form",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=utcnow(),
    )
    status = LeadStatusChangedV1(lead_id="lead-1", status="nurturing", source_channel="web")
    tx.emit(status, batched=True)
    tx.emit(qualified, batched=True)
    tx.emit(status)
    assert tx.batched == [True, False, False]
