"""What services share from the platform: ids, time, roster, actor, unit of work (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from crm_contracts.events.sales import LeadAssignedV1
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock, now_millis, to_millis
from crm_platform.errors import RuleViolation
from crm_platform.ids import new_id
from crm_platform.roster import RosterEntry, active_ids, rotation, round_robin, validate_roster
from crm_platform.uow import FakeUnit, FakeUnitOfWork
from pydantic import ValidationError


def test_new_ids_are_canonical_uuids_and_distinct() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in list(ids)[:20]:
        assert str(uuid.UUID(value)) == value


def test_to_millis_truncates_to_mongodbs_precision_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=paris)
    assert to_millis(moment) == datetime(2026, 12, 5, 0, 2, 3, 456000, tzinfo=UTC)
    assert to_millis(moment).tzinfo == UTC
    # A naive datetime is taken as UTC, not as the machine's local time.
    assert to_millis(datetime(2026, 1, 1, 12, 0, 0, 999999)) == datetime(  # noqa: DTZ001 - naive on purpose
        2026, 1, 1, 12, 0, 0, 999000, tzinfo=UTC
    )


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock() == clock()
    clock.advance(minutes=90)
    assert now_millis(clock) == datetime(2026, 1, 1, 1, 30, tzinfo=UTC)


def test_round_robin_takes_active_user_ids_in_order() -> None:
    assert rotation(["zoe", "bob", "zoe", "carla"]) == ["bob", "carla", "zoe"]
    assert [round_robin(["zoe", "bob", "carla"], t) for t in range(5)] == [
        "bob",
        "carla",
        "zoe",
        "bob",
        "carla",
    ]
    assert round_robin([], 7) is None


def test_a_roster_is_unique_sorted_and_refuses_blank_ids() -> None:
    roster = validate_roster(
        [RosterEntry(user_id="zoe"), RosterEntry(user_id=" bob ", active=False), RosterEntry(user_id="carla")]
    )
    assert [e.user_id for e in roster] == ["bob", "carla", "zoe"]
    assert active_ids(roster) == ["carla", "zoe"]
    with pytest.raises(RuleViolation) as err:
        validate_roster([RosterEntry(user_id="zoe"), RosterEntry(user_id="zoe")], field="csms")
    assert err.value.details["field"] == "csms"
    with pytest.raises(ValidationError):
        RosterEntry(user_id="   ")


def test_an_actor_checks_roles_and_shows_a_name() -> None:
    actor = Actor.of("u-1", ["sales_rep"], "sam")
    assert actor.has_any({"sales_rep", "admin"})
    assert not actor.has_any({"admin"})
    assert actor.display_name == "sam"
    assert Actor("u-2").display_name == "u-2"


class _Unit(FakeUnit):
    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}


async def test_the_fake_unit_of_work_undoes_a_failed_work_like_an_aborted_transaction() -> None:
    uow = FakeUnitOfWork(_Unit())
    due = datetime(2026, 1, 1, tzinfo=UTC)

    async def ok(unit: _Unit) -> None:
        unit.rows["a"] = 1
        unit.emit(LeadAssignedV1(lead_id="l-1", owner="u-1", response_due_at=due), correlation_id="c-1")

    async def fails(unit: _Unit) -> None:
        unit.rows["a"] = 2
        unit.rows["b"] = 3
        unit.emit(LeadAssignedV1(lead_id="l-2", owner="u-1", response_due_at=due))
        raise RuleViolation("no")

    await uow.run(ok)
    with pytest.raises(RuleViolation):
        await uow.run(fails)
    assert uow.unit.rows == {"a": 1}
    assert [e.lead_id for e in uow.unit.emitted(LeadAssignedV1)] == ["l-1"]
    assert uow.unit.events[0].correlation_id == "c-1"
    assert uow.commits == 1


def test_the_relay_writes_a_stored_envelope_as_the_envelope_itself_would() -> None:
    from crm_contracts import Envelope, envelope_for
    from crm_contracts.events.leads import LeadCapturedV1
    from crm_platform.mongo import outbox_doc
    from crm_platform.outbox import rfc3339, wire_record

    event = LeadCapturedV1.model_validate(
        {"lead_id": "l-1", "email": "zoë@example.com", "name": "Zoë", "company": "Ünï",
         "source_channel": "web", "consent": {"marketing_email": True}, "merged": False}
    )  # fmt: skip
    env = envelope_for(event, source="leads", correlation_id="l-1", causation_id=None)
    produced = datetime(2026, 12, 5, 9, 0, 0, 123456, tzinfo=UTC)
    value, headers = wire_record(outbox_doc(env)["envelope"], rfc3339(produced))
    expected = env.model_copy(update={"produced_at": produced})
    assert Envelope.from_bytes(value) == expected
    assert value == expected.to_bytes()  # byte for byte: same order, UTF-8 unescaped, Z suffix
    assert headers == expected.headers()


def test_the_relay_writes_floats_as_the_envelope_itself_would() -> None:
    from crm_contracts import envelope_for
    from crm_contracts.events.leads import LeadQualifiedV1
    from crm_platform.mongo import outbox_doc
    from crm_platform.outbox import rfc3339, wire_record

    event = LeadQualifiedV1.model_validate(
        {"lead_id": "l-2", "contact": {"name": "Ada", "email": "ada@example.com"}, "company": "Co",
         "score": 1e16, "threshold": 0.00001, "score_reasons": [], "source_channel": "web",
         "behaviour_summary": {}, "consent": {"marketing_email": True, "captured_at": "2026-12-05T09:00:00Z"},
         "qualified_at": "2026-12-05T09:00:00Z"}
    )  # fmt: skip
    env = envelope_for(event, source="leads", correlation_id="l-2")
    produced = datetime(2026, 12, 5, 9, 0, 0, 123456, tzinfo=UTC)
    value, _ = wire_record(outbox_doc(env)["envelope"], rfc3339(produced))
    # json.dumps wrote 1e+16 and 1e-05 where the envelope writes 1e16 and 1e-5
    assert value == env.model_copy(update={"produced_at": produced}).to_bytes()


def test_open_batches_raise_the_young_threshold_until_the_last_one_ends() -> None:
    """A bulk batch's objects live until its transaction ends and are freed by their reference
    counts: while any batch is open the young generation waits for GC_BATCH_YOUNG_THRESHOLD net
    allocations, and the threshold found is back once the last overlapping batch ends, even if
    it ends first or by an error (docs/performance.md, eleventh session, bulk)."""
    import gc

    from crm_platform.app import GC_BATCH_YOUNG_THRESHOLD, GC_YOUNG_THRESHOLD, batch_heap

    saved = gc.get_threshold()
    try:
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        first = batch_heap()
        first.__enter__()
        assert gc.get_threshold() == (GC_BATCH_YOUNG_THRESHOLD, 10, 10)
        second = batch_heap()
        second.__enter__()
        first.__exit__(None, None, None)  # the first batch ends while the second is open
        assert gc.get_threshold() == (GC_BATCH_YOUNG_THRESHOLD, 10, 10)
        failed = RuntimeError("the second batch failed")
        assert not second.__exit__(RuntimeError, failed, None)  # raised on, not swallowed
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert GC_BATCH_YOUNG_THRESHOLD >= 10 * GC_YOUNG_THRESHOLD
    finally:
        gc.set_threshold(*saved)


def test_a_started_service_collects_its_young_objects_every_ten_thousand_allocations() -> None:
    """A bulk batch's objects are not walked and promoted by a young collection every 700
    allocations (docs/performance.md, ninth session, bulk): the start-up freeze sets it."""
    import gc

    from crm_platform.app import GC_YOUNG_THRESHOLD, freeze_startup_heap

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        freeze_startup_heap()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert GC_YOUNG_THRESHOLD >= 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
