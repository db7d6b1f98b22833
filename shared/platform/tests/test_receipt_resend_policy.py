"""When a handoff without a receipt is re-sent (crm_platform.receipts, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import LeadVerdictV1
from crm_platform import receipts as receipts_module
from crm_platform.mongo import HANDOFFS_SENT, Store, connect, outbox_doc
from crm_platform.outbox import OutboxRelay
from crm_platform.receipts import Decision, HandoffTracker, ResendPolicy, decide
from crm_platform.settings import ServiceSettings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = ResendPolicy(
    after=timedelta(seconds=60),
    max_backoff=timedelta(seconds=300),
    max_attempts=3,
    silent_after=timedelta(seconds=900),
)


def published(seconds_ago: float) -> dict[str, object]:
    return {"published": True, "published_at": NOW - timedelta(seconds=seconds_ago)}


def check(resends: int, row: dict[str, object] | None, *, overtaken: bool = True) -> Decision:
    return decide(POLICY, resends=resends, outbox_row=row, now=NOW, overtaken=overtaken)


def test_the_wait_doubles_after_each_re_send_up_to_the_cap() -> None:
    waits = [POLICY.wait(n).total_seconds() for n in range(6)]
    assert waits == [60, 120, 240, 300, 300, 300]


def test_a_handoff_still_in_the_backlog_is_late_not_lost() -> None:
    decision = check(0, {"published": False})
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=60)


def test_a_recent_publish_waits_until_its_timeout() -> None:
    decision = check(1, published(100))
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=20)  # 120 s after the re-send


def test_an_overtaken_publish_without_receipt_past_its_timeout_is_re_sent() -> None:
    decision = check(0, published(60))
    assert decision.action == "resend"
    assert decision.next_check_at == NOW + timedelta(seconds=120)


def test_while_the_receiver_shows_no_progress_nothing_is_re_sent_until_the_silent_timeout() -> None:
    """A receiver that is down or catching up gets no copies to wade through."""
    decision = check(0, published(120), overtaken=False)
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=60)
    near = check(0, published(870), overtaken=False)
    assert near.action == "wait"
    assert near.next_check_at == NOW + timedelta(seconds=30)  # at the silent timeout
    assert check(0, published(900), overtaken=False).action == "resend"  # a lone handoff


def test_after_the_last_attempt_the_handoff_is_given_up() -> None:
    assert check(3, published(300)).action == "give_up"
    assert check(2, published(240)).action == "resend"


def test_a_handoff_whose_outbox_row_is_gone_cannot_be_re_sent() -> None:
    assert check(0, None).action == "gone"


def _tracker() -> HandoffTracker:
    settings = ServiceSettings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "MONGODB_URI": "mongodb://127.0.0.1:1",
            "CRM_SERVICE_NAME": "sales",
        }
    )
    store = Store(connect(settings.mongodb_uri, "test"), "unused", "sales")  # never connects here
    return HandoffTracker(store, settings, department="sales", wake_relay=lambda: None)


def _receipt(handoff_event_id: str, *, from_department: str, occurred_at: datetime) -> bytes:
    event = HandoffReceivedV1(
        handoff="deal-won",
        handoff_event_id=handoff_event_id,
        handoff_event_type="deal.won",
        from_department=from_department,
        to_department="customer-success",
        occurred_at=occurred_at,
        stored_at=occurred_at,
        transport_latency_seconds=0.01,
    )
    return envelope_for(event, source="service-desk", correlation_id="c").to_bytes()


def test_the_listener_keeps_only_its_departments_receipts_and_the_newest_handoff_time() -> None:
    tracker = _tracker()
    ids = tracker.ours(
        [
            _receipt("mine-1", from_department="sales", occurred_at=NOW),
            _receipt("theirs", from_department="marketing", occurred_at=NOW + timedelta(hours=1)),
            b"not an envelope",
            _receipt("mine-2", from_department="sales", occurred_at=NOW + timedelta(seconds=90)),
        ]
    )
    assert ids == ["mine-1", "mine-2"]
    assert tracker.newest_receipted == {"deal-won": NOW + timedelta(seconds=90)}
    # Overtaken: a handoff that occurred at least CRM_HANDOFF_RESEND_AFTER_SECONDS (120) later is receipted.
    assert tracker.overtaken("deal-won", NOW - timedelta(seconds=30))
    assert not tracker.overtaken("deal-won", NOW)
    assert not tracker.overtaken("lead-verdict", NOW - timedelta(days=1))


def test_a_receipt_that_contradicts_the_handoff_table_silences_no_resend() -> None:
    tracker = _tracker()
    forged = HandoffReceivedV1(
        handoff="deal-won",
        handoff_event_id="forged",
        handoff_event_type="deal.won",
        from_department="sales",
        to_department="marketing",  # deal-won is received by customer success, not marketing
        occurred_at=NOW,
        stored_at=NOW,
        transport_latency_seconds=0.01,
    )
    renamed = forged.model_copy(update={"to_department": "customer-success", "handoff": "lead-verdict"})
    raws = [envelope_for(e, source="leads", correlation_id="c").to_bytes() for e in (forged, renamed)]
    assert tracker.ours([*raws, _receipt("real", from_department="sales", occurred_at=NOW)]) == ["real"]
    assert tracker.newest_receipted == {"deal-won": NOW}


def test_only_this_departments_receipts_are_validated_as_envelopes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain's receipts are mostly the ones the department itself emitted (sales: one per
    lead.qualified it received): they are dropped on their parsed type and from_department,
    not after a whole envelope's validation (docs/performance.md, eleventh session, drain)."""
    validated: list[object] = []

    def counting(real: Any) -> Any:
        def validate(value: Any, *args: Any, **kwargs: Any) -> Any:
            validated.append(value)
            return real(value, *args, **kwargs)

        return validate

    for name in ("model_validate", "model_validate_json"):
        monkeypatch.setattr(Envelope, name, counting(getattr(Envelope, name)))
    tracker = _tracker()
    theirs = [_receipt(f"theirs-{i}", from_department="marketing", occurred_at=NOW) for i in range(50)]
    assert tracker.ours([*theirs, _receipt("mine", from_department="sales", occurred_at=NOW)]) == ["mine"]
    assert len(validated) == 1


def test_receipts_are_parsed_with_the_string_cache_for_keys_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A receipt's values (ids, times) are all new and most receipts are dropped at once: the
    parse shares only the keys through pydantic-core's string cache (twenty-sixth session,
    salesdrain); the same receipts are kept."""
    import pydantic_core

    parsed: list[object] = []
    from_json = pydantic_core.from_json

    def recording(raw: Any, **kwargs: Any) -> Any:
        parsed.append(kwargs.get("cache_strings", "all"))
        return from_json(raw, **kwargs)

    monkeypatch.setattr(pydantic_core, "from_json", recording)
    tracker = _tracker()
    raws = [
        _receipt("theirs", from_department="marketing", occurred_at=NOW),
        _receipt("mine", from_department="sales", occurred_at=NOW),
    ]
    assert tracker.ours(raws) == ["mine"]
    assert parsed == ["keys", "keys"]


async def test_the_receipt_listener_is_a_patient_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A receipt is needed within minutes (the re-send timer): the listener's consumer takes the
    patient idle pause (crm_platform.kafka.be_patient), not the departments' idle pause."""
    tracker = _tracker()
    made: list[Any] = []

    class Consumer:
        def __init__(self, **config: Any) -> None:
            self._client = SimpleNamespace()
            made.append(self)

        def subscribe(self, topics: list[str], listener: Any) -> None:
            pass

        async def start(self) -> None:
            await tracker.stop()  # one round is enough
            raise RuntimeError("no broker here")

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(receipts_module, "make_consumer", lambda **config: Consumer(**config))
    await tracker._listen()
    [consumer] = made
    assert consumer._client._crm_patient is True


@pytest.mark.integration
async def test_a_receipt_before_the_relays_record_is_kept_receipted(mongodb_uri: str) -> None:
    """The relay records a handoff once it is published, with its mark (crm_platform.outbox):
    a fast receipt can come first. It is recorded receipted then, and the relay's record, coming
    after, leaves it so (it would otherwise stay pending and be re-sent for nothing)."""
    settings = ServiceSettings.model_validate(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "MONGODB_URI": mongodb_uri, "CRM_SERVICE_NAME": "sales"}
    )
    store = Store(connect(mongodb_uri, "receipts-test"), f"t_receipts_{uuid.uuid4().hex[:8]}", "sales")
    tracker = HandoffTracker(store, settings, department="sales", wake_relay=lambda: None)
    relay = OutboxRelay(store.db, bootstrap="unused", service="sales")
    verdicts = [
        envelope_for(
            LeadVerdictV1(lead_id=lead, verdict="accepted", decided_by="sam"),
            source="sales",
            correlation_id=lead,
        )
        for lead in ("lead-1", "lead-2")
    ]
    rows = [outbox_doc(env) for env in verdicts]
    known, early = (str(env.event_id) for env in verdicts)
    sent = store.db[HANDOFFS_SENT]
    try:
        await relay._track_handoffs(rows[:1])  # published and recorded, pending
        assert await tracker.mark_receipted([known, early, known]) == 2
        await relay._track_handoffs(rows)  # the early one published before its receipt came
        records = {d["_id"]: d async for d in sent.find()}
        assert {i: d["state"] for i, d in records.items()} == {known: "receipted", early: "receipted"}
        assert records[early]["receipted_at"] is not None
        assert await tracker.mark_receipted([early]) == 0, "receipted once"
    finally:
        await store.client.drop_database(store.db.name)
        await store.client.close()
