"""Ids and event ids: time-ordered, drawn from the OS a block at a time (crm_contracts.uuids), no I/O."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for, uuids
from crm_contracts.events.sales import LeadAssignedV1
from crm_platform.ids import new_id

_ENVELOPE: dict[str, Any] = {
    "event_type": "lead.captured",
    "schema_version": 1,
    "occurred_at": datetime(2026, 12, 7, tzinfo=UTC),
    "source": "leads",
    "correlation_id": "c",
    "partition_key": "k",
    "payload": {},
}


def _count_draws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    draws: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(uuids.os, "urandom", counted)
    uuids._pool.clear()
    uuids._pool7.clear()
    return draws


def test_ids_are_version_7_uuids_in_canonical_form_and_never_repeat() -> None:
    ids = [new_id() for _ in range(5 * uuids.BLOCK + 3)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    objects = [uuids.uuid4() for _ in range(uuids.BLOCK + 1)]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in objects)
    assert len({*objects, *map(uuid.UUID, ids)}) == len(objects) + len(ids)


def test_a_thousand_ids_and_event_ids_take_a_few_draws_from_the_os_not_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = _count_draws(monkeypatch)
    for _ in range(1000):
        new_id()
        Envelope(
            event_type="lead.captured",
            schema_version=1,
            occurred_at=datetime.now(UTC),
            source="leads",
            correlation_id="c",
            partition_key="k",
            payload={},
        )
    assert len(draws) == -(-2000 // uuids.BLOCK)
    assert set(draws) == {16 * uuids.BLOCK}


def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    new_id()  # the parent holds a partly used block
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    from_child = os.read(read, 100).decode()
    os.close(read)
    assert status == 0
    assert uuid.UUID(from_child).version == 7
    assert from_child != new_id()


def test_ids_made_later_sort_after_ids_made_earlier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time-ordered: an index on ids takes a new one at its edge, not on a random page (the
    import's mongod wrote back whole pages of its random-keyed indexes: docs/performance.md,
    "Tenth session, import")."""
    clock = [1_796_522_728_387_000_000]  # nanoseconds
    monkeypatch.setattr(uuids, "_time_ns", lambda: clock[0])
    made = []
    for _ in range(3 * uuids.BLOCK):
        made.append(new_id())
        clock[0] += 1_000_000  # a millisecond later
    assert made == sorted(made)
    assert [uuid.UUID(i) for i in made] == sorted(uuid.UUID(i) for i in made)
    assert uuid.UUID(made[0]).int >> 80 == 1_796_522_728_387  # the Unix time in milliseconds


def test_every_emitted_events_id_is_a_version_7_uuid_made_now_and_later_ones_sort_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event's id (an envelope's default, ``envelope_for``'s) is time-ordered: a consumer's
    ledger and whatever it keys by a consumed event's id (sales' inbox item, the audit entries
    naming it) take each new one at the index's edge (docs/performance.md, "Twenty-third
    session, eventids"). Ids of one millisecond differ, in any order."""
    clock = [1_796_522_728_387_000_000]
    monkeypatch.setattr(uuids, "_time_ns", lambda: clock[0])
    event = LeadAssignedV1(lead_id="l-1", owner="rep-1", response_due_at=datetime(2026, 12, 7, tzinfo=UTC))
    made: list[uuid.UUID] = []
    for i in range(2 * uuids.BLOCK):
        if i % 2:
            made.append(envelope_for(event, source="leads", correlation_id="c").event_id)
        else:
            made.append(Envelope(**_ENVELOPE).event_id)
        clock[0] += 1_000_000 if i % 3 == 0 else 1_000  # a millisecond later, or within one
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in made)
    assert len(set(made)) == len(made)
    millis = [value.int >> 80 for value in made]
    assert millis == sorted(millis)
    assert millis[0] == 1_796_522_728_387
    by_ms: dict[int, list[uuid.UUID]] = {}
    for value in made:
        by_ms.setdefault(value.int >> 80, []).append(value)
    assert sorted(made) == [value for ms in sorted(by_ms) for value in sorted(by_ms[ms])]
    assert [str(value) for value in sorted(made)] == sorted(str(value) for value in made)


def test_a_uuids_text_is_made_once_per_object_and_is_always_its_str(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uuids.text`` answers ``str(value)``; asked again for the same object it answers without
    making the text again; an equal UUID that is another object, and any UUID once the kept texts
    were dropped, are made text again, never mistaken for another."""
    made: list[uuid.UUID] = []
    as_text = uuid.UUID.__str__

    def counted(self: uuid.UUID) -> str:
        made.append(self)
        return as_text(self)

    monkeypatch.setattr(uuid.UUID, "__str__", counted)
    first = uuids.uuid4()
    assert uuids.text(first) == as_text(first)
    assert made == [first]
    assert uuids.text(first) is uuids.text(first)
    assert made == [first], "made once"
    twin = uuid.UUID(int=first.int)
    assert uuids.text(twin) == as_text(first)
    assert len(made) == 2
    many = [uuids.uuid4() for _ in range(uuids.TEXTS_KEPT + 10)]  # past the kept texts: dropped
    assert [uuids.text(u) for u in many] == [as_text(u) for u in many]
    assert [uuids.text(u) for u in many] == [as_text(u) for u in many]
    assert uuids.text(first) == as_text(first)
    assert len(uuids._texts) <= uuids.TEXTS_KEPT


@pytest.mark.parametrize(("make", "version"), [(uuids.uuid7, 7), (uuids.uuid4, 4)])
def test_an_event_id_is_the_uuid_that_uuid_int_makes_without_its_checks(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], uuid.UUID], version: int
) -> None:
    """``uuids.uuid7`` (every event's id) and ``uuids.uuid4`` are the object ``uuid.UUID(int=...)``
    makes of their integer (equal, same hash, text, version, attributes, pickled alike), set
    without ``UUID.__init__``'s checks; no two alike."""
    import pickle

    made = [make() for _ in range(uuids.BLOCK + 1)]
    assert len(set(made)) == len(made)
    for value in made:
        twin = uuid.UUID(int=value.int)
        assert type(value) is uuid.UUID
        assert (value, hash(value), str(value), repr(value)) == (twin, hash(twin), str(twin), repr(twin))
        assert (value.version, value.variant, value.is_safe) == (version, uuid.RFC_4122, twin.is_safe)
        assert pickle.loads(pickle.dumps(value)) == value
        with pytest.raises(TypeError):
            value.int = 1  # type: ignore[misc]  # immutable, as any UUID

    def checked(*args: object, **kwargs: object) -> None:
        raise AssertionError("UUID.__init__ called")

    monkeypatch.setattr(uuid.UUID, "__init__", checked)
    assert make().version == version
