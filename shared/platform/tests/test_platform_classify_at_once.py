"""A valid record is read without the walk; every record gets the verdict the ordered checks give.

``classify`` first tries to accept a record the way a valid one can be read (the same parse and
contracts, the walk's bounds checked only where the payload's model lets a problem through);
whatever that does not accept is judged by the ordered checks as before. The verdicts must be
the same as the ordered checks' alone, for valid records and for every kind of bad one.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic_core
import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Contact, Money, SealedPerson
from crm_contracts.events.leads import LeadCapturedV2, LeadQualifiedV2
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.events.sales import DealWonV1, Product
from crm_platform import dead_letters
from crm_platform.dead_letters import Accepted, Rejected, classify
from crm_platform.testing import lead_qualified

NOW = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)
AT = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)


def _docs() -> list[tuple[str, dict[str, Any]]]:
    sealed = SealedPerson(person_id="p1", key_owner="leads", nonce="A" * 16, ciphertext="c2VhbGVk")
    qualified = LeadQualifiedV2(**dict(lead_qualified(qualified_at=AT)), sealed_contact=sealed)
    receipt = HandoffReceivedV1(
        handoff="lead-qualified",
        handoff_event_id="h1",
        handoff_event_type="lead.qualified",
        from_department="marketing",
        to_department="sales",
        occurred_at=AT,
        stored_at=AT,
        transport_latency_seconds=0.25,
    )
    captured = LeadCapturedV2.model_validate(
        {
            "lead_id": "lead-2",
            "email": "ada@example.com",
            "name": "Ada",
            "company": "Acme",
            "source_channel": "web",
            "consent": {"marketing_email": True},
            "merged": False,
            "custom": {
                "budget": {"type": "number", "value": 12.5},
                "tier": {"type": "choice", "value": "gold"},
            },
        }
    )
    won = DealWonV1(
        deal_id="d1",
        account_name="Acme",
        contacts=[Contact(name="Ada", email="ada@example.com")],
        products=[Product(sku="p", name="P", quantity=1, unit_price=9.5)],
        value=Money(amount=100.0),
        commitments=[],
        sales_owner="rep1",
        won_at=AT,
    )
    out = []
    for event, source in ((qualified, "leads"), (receipt, "sales"), (captured, "leads"), (won, "sales")):
        envelope = envelope_for(event, source=source, correlation_id="c", occurred_at=AT)
        out.append((event.topic, json.loads(envelope.to_bytes())))
    return out


def _ordered(raw: bytes | None, topic: str) -> Accepted | Rejected:
    """The ordered checks alone (the verdicts before the one-pass read)."""
    saved = dead_letters._accepted_at_once
    dead_letters._accepted_at_once = lambda *_: None
    try:
        return classify(raw, topic=topic, now=NOW)
    finally:
        dead_letters._accepted_at_once = saved


def _same(a: Accepted | Rejected, b: Accepted | Rejected) -> bool:
    if isinstance(a, Rejected) or isinstance(b, Rejected):
        return a == b
    return (
        repr(a) == repr(b)  # repr: a NaN read from a string is equal to itself here
        and type(a.event) is type(b.event)
        and a.envelope.model_fields_set == b.envelope.model_fields_set
        and repr(a.envelope.payload) == repr(b.envelope.payload)
    )


# Raw JSON put in place of a value: numbers out of range, literals the parser refuses, deep nests.
_RAW = [
    "1e400",
    "-1e309",
    "NaN",
    "Infinity",
    "-Infinity",
    "9" * 400,
    "9" * 5000,
    "[" * 40 + "]" * 40,
    '{"a":' * 40 + "1" + "}" * 40,
    '[{"points": 1e400}]',
    '{"type": "number", "value": 1e400}',
]
_VALUES: list[Any] = [None, [], {}, True, 0, -1, 1.5, "x", "", "inf", "NaN", "1e400", [1e300], {"x": 1}]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*path, i))
    return out


def _mutated(doc: dict[str, Any], rng: random.Random) -> bytes:
    doc = json.loads(json.dumps(doc))
    path = rng.choice(_paths(doc))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    marker = "@@raw@@"
    roll = rng.random()
    raw_value = None
    if roll < 0.45:
        raw_value = rng.choice(_RAW)
        parent[path[-1]] = marker
    elif roll < 0.85:
        parent[path[-1]] = rng.choice(_VALUES)
    elif roll < 0.92 and isinstance(parent, dict) and path != ("event_id",):  # a fresh default each read
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent["unexpected"] = 1
    text = json.dumps(doc)
    if raw_value is not None:
        text = text.replace(json.dumps(marker), raw_value)
    return text.encode()


def test_valid_records_are_accepted_as_the_ordered_checks_accept_them() -> None:
    for topic, doc in _docs():
        raw = json.dumps(doc).encode()
        outcome = classify(raw, topic=topic, now=NOW)
        assert isinstance(outcome, Accepted), outcome
        assert _same(outcome, _ordered(raw, topic))


def test_a_valid_record_is_parsed_once_and_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted in one pass: no second parse, and no walk over a payload whose model bounds it
    (every value of every record was visited before)."""

    def never(*_: Any) -> None:
        pytest.fail("parsed a second time or walked")

    monkeypatch.setattr(dead_letters, "_parsed", never)
    monkeypatch.setattr(dead_letters, "_walk", never)
    for topic, doc in _docs():
        assert isinstance(classify(json.dumps(doc).encode(), topic=topic, now=NOW), Accepted)


def test_a_valid_records_payload_is_validated_by_its_models_validator_directly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The payload's model validator called as it is, not through ``model_validate`` (the same
    validation behind a Python frame checking its options): the same events."""
    from pydantic import BaseModel

    docs = list(_docs())
    expected = [_ordered(json.dumps(doc).encode(), topic) for topic, doc in docs]

    def refused(cls: type[BaseModel], *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{cls.__name__}.model_validate called")

    monkeypatch.setattr(dead_letters, "_payload_checks", {})
    monkeypatch.setattr(BaseModel, "model_validate", classmethod(refused))
    for (topic, doc), ordered in zip(docs, expected, strict=True):
        outcome = classify(json.dumps(doc).encode(), topic=topic, now=NOW)
        assert isinstance(outcome, Accepted), outcome
        assert _same(outcome, ordered)


def test_every_mutated_record_gets_the_ordered_checks_verdict() -> None:
    rng = random.Random(16)
    reasons: set[str] = set()
    accepted = 0
    for topic, doc in _docs():
        for _ in range(400):
            raw = _mutated(doc, rng)
            outcome = classify(raw, topic=topic, now=NOW)
            expected = _ordered(raw, topic)
            assert _same(outcome, expected), (raw, outcome, expected)
            if isinstance(outcome, Rejected):
                reasons.add(outcome.reason)
            else:
                accepted += 1
    assert {"malformed", "too_deep", "schema_invalid", "wrong_source", "unknown_version"} <= reasons
    assert accepted > 0, "some mutations keep a record valid (an optional value set to None, ...)"


def test_a_record_parsed_with_the_string_cache_for_keys_only_gets_the_same_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cache_strings="keys"`` (the analytics worker's: its values are nearly all new) parses
    with pydantic-core's string cache for the keys only, and changes no verdict: valid and
    mutated records are accepted or refused, with the same reason, envelope and event."""
    parsed: list[object] = []
    from_json = pydantic_core.from_json

    def recording(raw: bytes, **kwargs: Any) -> Any:
        parsed.append(kwargs.get("cache_strings", "all"))
        return from_json(raw, **kwargs)

    rng = random.Random(23)
    cases = [(topic, json.dumps(doc).encode()) for topic, doc in _docs()]
    cases += [(topic, _mutated(doc, rng)) for topic, doc in _docs() for _ in range(150)]
    expected = [classify(raw, topic=topic, now=NOW) for topic, raw in cases]
    monkeypatch.setattr(pydantic_core, "from_json", recording)
    for (topic, raw), before in zip(cases, expected, strict=True):
        parsed.clear()
        outcome = classify(raw, topic=topic, now=NOW, cache_strings="keys")
        assert _same(outcome, before), (raw, outcome, before)
        assert parsed[:1] == ["keys"] or len(raw) > dead_letters.MAX_RECORD_BYTES or not raw
    assert sum(isinstance(v, Accepted) for v in expected) >= 4


async def test_the_platform_consumer_parses_its_records_with_the_string_cache_for_keys_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every department's consumer (and the key consumers) classifies a record as the analytics
    worker does: pydantic-core's string cache for the keys only, a record's values being nearly
    all new (twenty-sixth session, salesdrain); the record is accepted as before."""
    from aiokafka import ConsumerRecord
    from crm_platform.consumer import ConsumerConfig, EventConsumer, _Ready
    from crm_platform.mongo import Store, connect

    async def handler(*_: Any) -> None:
        return None

    parsed: list[object] = []
    from_json = pydantic_core.from_json

    def recording(raw: bytes, **kwargs: Any) -> Any:
        parsed.append(kwargs.get("cache_strings", "all"))
        return from_json(raw, **kwargs)

    store = Store(connect("mongodb://127.0.0.1:1", "test"), "unused", "test")  # never connects
    for topic, doc in _docs():
        raw = json.dumps(doc).encode()
        expected = classify(raw, topic=topic)
        config = ConsumerConfig(service="test", group_id="test", topics=[topic], bootstrap="-")
        consumer = EventConsumer(config, store, {doc["event_type"]: handler})
        monkeypatch.setattr(pydantic_core, "from_json", recording)
        parsed.clear()
        ready = consumer._prepare(ConsumerRecord(topic, 0, 0, 0, 0, b"k", raw, None, 1, len(raw), ()))
        monkeypatch.setattr(pydantic_core, "from_json", from_json)
        assert parsed == ["keys"]
        assert isinstance(ready, _Ready)
        assert isinstance(expected, Accepted)
        assert _same(Accepted(ready.envelope, ready.event), expected)


@pytest.mark.parametrize(
    ("topic_index", "place", "raw_number"),
    [
        (0, ("payload", "score"), "1e400"),
        (0, ("payload", "score_reasons", 0, "points"), "-1e309"),
        (0, ("payload", "threshold"), "NaN"),
        (1, ("payload", "transport_latency_seconds"), "Infinity"),
        (2, ("payload", "custom", "budget", "value"), "1e400"),
        (3, ("payload", "value", "amount"), "1e400"),
    ],
)
def test_a_number_out_of_range_in_a_float_field_is_malformed(
    topic_index: int, place: tuple[Any, ...], raw_number: str
) -> None:
    topic, doc = _docs()[topic_index]
    parent: Any = doc
    for step in place[:-1]:
        parent = parent[step]
    parent[place[-1]] = "@@n@@"
    raw = json.dumps(doc).replace('"@@n@@"', raw_number).encode()
    outcome = classify(raw, topic=topic, now=NOW)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "malformed"
    assert outcome == _ordered(raw, topic)


def _timestamp_places(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where a document holds a timestamp: the envelope's two and the payload's."""
    places: list[tuple[Any, ...]] = [("occurred_at",), ("produced_at",)]
    return places + [("payload", k) for k, v in doc["payload"].items() if k.endswith("_at") and v is not None]


def _with(doc: dict[str, Any], place: tuple[Any, ...], value: Any) -> bytes:
    doc = json.loads(json.dumps(doc))
    parent = doc
    for step in place[:-1]:
        parent = parent[step]
    parent[place[-1]] = value
    return json.dumps(doc).encode()


def test_timestamps_at_the_edge_of_rfc3339_get_the_ordered_checks_verdict() -> None:
    """The first read checks the envelope's timestamps in pydantic-core (an ASCII RFC 3339
    pattern, then the datetime), not through the contract's Python check: every record with a
    timestamp at the edge of RFC 3339, in the envelope or the payload, gets the ordered checks'
    verdict, reason and error."""
    from crm_platform.testing import EDGE_TIMESTAMPS

    accepted, refused = 0, set()
    for topic, doc in _docs():
        for place in _timestamp_places(doc):
            for value in [*EDGE_TIMESTAMPS, "2026-12-06T17:00:00.5+02:00", "2026-12-06t17:00:00z"]:
                raw = _with(doc, place, value)
                outcome, expected = classify(raw, topic=topic, now=NOW), _ordered(raw, topic)
                assert _same(outcome, expected), (place, value, outcome, expected)
                accepted += isinstance(outcome, Accepted)
                refused |= {outcome.reason} if isinstance(outcome, Rejected) else set()
    assert accepted >= 8
    assert refused == {"schema_invalid", "implausible_time"}


def test_times_at_the_plausible_windows_edges_get_the_ordered_checks_verdict() -> None:
    """The first read's envelope times (pydantic-core's datetimes once its pattern matched) are
    judged as the ordered checks judge theirs: at the window's edges to the microsecond, in far
    zones and at the calendar's ends, the same verdict and reason."""
    from crm_contracts.envelope import MAX_CLOCK_SKEW, MAX_EVENT_AGE
    from crm_platform.outbox import rfc3339

    micro = timedelta(microseconds=1)
    instants = [
        e + d for e in (NOW - MAX_EVENT_AGE, NOW + MAX_CLOCK_SKEW) for d in (-micro, 0 * micro, micro)
    ]
    zones = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))]
    values: list[str | None] = [rfc3339(i.astimezone(z)) for i in instants for z in zones]
    values += ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999-01:00", None]
    verdicts: list[str] = []
    for topic, doc in _docs():
        for name in ("occurred_at", "produced_at"):
            for value in values:
                raw = _with(doc, (name,), value)
                outcome, expected = classify(raw, topic=topic, now=NOW), _ordered(raw, topic)
                assert _same(outcome, expected), (name, value, outcome, expected)
                verdicts.append(outcome.reason if isinstance(outcome, Rejected) else "accepted")
    assert {"accepted", "implausible_time", "schema_invalid"} <= set(verdicts)


def test_a_payload_that_is_not_an_object_gets_the_ordered_checks_verdict() -> None:
    """The first read takes the envelope's payload as the parser gave it (not copied into a new
    dict): one that is not a JSON object is refused as the ordered checks refuse it."""
    for topic, doc in _docs():
        payloads: list[Any] = [None, [], [doc["payload"]], "x", 0, 1.5, True, {}]
        for value in payloads:
            raw = _with(doc, ("payload",), value)
            outcome, expected = classify(raw, topic=topic, now=NOW), _ordered(raw, topic)
            assert _same(outcome, expected), (value, outcome, expected)
            assert isinstance(outcome, Rejected)
