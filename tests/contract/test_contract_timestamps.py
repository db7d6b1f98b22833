"""Timestamps on the wire: RFC 3339 strings with a zone, in a plausible range; topic ownership."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_contracts import Envelope, decode, envelope_for
from crm_contracts.envelope import MAX_CLOCK_SKEW, MAX_EVENT_AGE, implausible_time
from crm_contracts.events.platform import HandoffReceivedV1
from crm_contracts.registry import wrong_source
from crm_contracts.topics import HANDOFF_RECEIPTS, LEAD_QUALIFIED, LEADS_EVENTS, SALES_EVENTS
from crm_platform.testing import EDGE_TIMESTAMPS
from pydantic import ValidationError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_type": "lead.qualified",
        "schema_version": 1,
        "occurred_at": "2026-01-01T00:00:00Z",
        "source": "leads",
        "correlation_id": "c",
        "partition_key": "k",
        "payload": {},
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "value",
    [12, 12.5, 0, True, "12", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00", "tomorrow", None],
)
def test_envelope_timestamps_are_rfc3339_strings_with_a_zone(value: object) -> None:
    fields = ["occurred_at"] if value is None else ["occurred_at", "produced_at"]  # produced_at is optional
    for name in fields:
        with pytest.raises(ValidationError):
            Envelope.from_bytes(json.dumps(_doc(**{name: value})).encode())


@pytest.mark.parametrize(
    "value", ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456+02:00", "2026-01-01t00:00:00z"]
)
def test_rfc3339_timestamps_with_a_zone_are_accepted(value: str) -> None:
    env = Envelope.from_bytes(json.dumps(_doc(occurred_at=value)).encode())
    assert env.occurred_at.tzinfo is not None


def test_payload_timestamps_are_strict_too() -> None:
    receipt = {
        "handoff": "lead-qualified",
        "handoff_event_id": "e",
        "handoff_event_type": "lead.qualified",
        "from_department": "marketing",
        "to_department": "sales",
        "occurred_at": 12,
        "stored_at": "2026-01-01T00:00:01Z",
        "transport_latency_seconds": 1.0,
    }
    env = Envelope.from_bytes(
        json.dumps(_doc(event_type="handoff.received", source="sales", payload=receipt)).encode()
    )
    with pytest.raises(ValidationError):
        decode(env)
    receipt["occurred_at"] = "2026-01-01T00:00:00Z"
    assert isinstance(decode(env.model_copy(update={"payload": receipt})), HandoffReceivedV1)


def test_a_naive_datetime_is_refused_when_building_an_event() -> None:
    with pytest.raises(ValidationError):
        Envelope.model_validate(_doc(occurred_at=datetime(2026, 1, 1)))  # noqa: DTZ001 - refused: naive


@pytest.mark.parametrize(
    ("occurred", "verdict"),
    [
        (NOW, None),
        (NOW + MAX_CLOCK_SKEW - timedelta(seconds=1), None),
        (NOW + MAX_CLOCK_SKEW + timedelta(seconds=1), "future"),
        (NOW - MAX_EVENT_AGE + timedelta(days=1), None),
        (NOW - MAX_EVENT_AGE - timedelta(days=1), "past"),
        (datetime(1970, 1, 1, 0, 0, 12, tzinfo=UTC), "past"),
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), "future"),
    ],
)
def test_implausible_times_are_named(occurred: datetime, verdict: str | None) -> None:
    env = Envelope.model_validate(_doc(occurred_at=occurred))
    problem = implausible_time(env, now=NOW)
    if verdict is None:
        assert problem is None
    else:
        assert problem is not None
        assert verdict in problem


def test_extreme_offsets_do_not_overflow() -> None:
    env = Envelope.from_bytes(json.dumps(_doc(occurred_at="0001-01-01T00:00:00+01:00")).encode())
    assert implausible_time(env, now=NOW) is not None
    env = Envelope.from_bytes(json.dumps(_doc(occurred_at="9999-12-31T23:59:59-01:00")).encode())
    assert implausible_time(env, now=NOW) is not None


def test_produced_at_is_checked_too() -> None:
    env = Envelope.model_validate(_doc(occurred_at=NOW, produced_at=NOW + timedelta(days=2)))
    assert implausible_time(env, now=NOW) is not None


def test_only_a_topics_owner_may_publish_its_declared_events() -> None:
    def env(event_type: str, source: str) -> Envelope:
        return Envelope.model_validate(_doc(event_type=event_type, source=source, occurred_at=NOW))

    assert wrong_source(LEAD_QUALIFIED, env("lead.qualified", "leads")) is None
    assert wrong_source(LEAD_QUALIFIED, env("lead.qualified", "sales")) is not None
    assert wrong_source(LEAD_QUALIFIED, env("lead.captured", "leads")) is not None, "not this topic's event"
    assert wrong_source(SALES_EVENTS, env("deal.won", "sales")) is not None, "deal.won has its own topic"
    assert wrong_source(LEADS_EVENTS, env("lead.captured", "leads")) is None
    # Receipts are emitted by whichever department received the handoff.
    for receiver in ("leads", "sales", "service-desk"):
        assert wrong_source(HANDOFF_RECEIPTS, env("handoff.received", receiver)) is None
    assert wrong_source(HANDOFF_RECEIPTS, env("handoff.received", "analytics")) is not None
    # An event type no contract knows is an unknown version, not a forgery.
    assert wrong_source(LEADS_EVENTS, env("lead.teleported", "leads")) is None
    # Topics outside the table (scratch topics in tests) have no owner rule.
    assert wrong_source("crm.test.scratch", env("lead.qualified", "anyone")) is None


def test_envelope_for_still_builds_valid_envelopes() -> None:
    from crm_contracts.events.common import Consent
    from crm_contracts.events.leads import LeadCapturedV1

    event = LeadCapturedV1(
        lead_id="l",
        email="l@example.com",
        name="n",
        company="c",
        source_channel="web",
        consent=Consent(marketing_email=True, captured_at=NOW),
        merged=False,
    )
    env = envelope_for(event, source="leads", correlation_id="l")
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert decode(Envelope.from_bytes(env.to_bytes())) == event


def test_the_parsed_json_validator_refuses_what_the_envelope_refuses_and_makes_the_same_envelope() -> None:
    """``parsed_json_validator`` (the dead-letter classification's first read) accepts no document
    ``Envelope.model_validate`` refuses, and of one it accepts makes the same envelope (fields,
    fields set, their order, the zones' types): timestamps at the edge of RFC 3339 in both
    envelope times, every other field given odd values, optional fields left out."""
    from crm_contracts.envelope import parsed_json_validator

    read = parsed_json_validator()
    full = _doc(event_id="0193a4b2-7c1d-7e3f-8a9b-0c1d2e3f4a5b", produced_at="2026-01-01T00:00:01Z")
    values: list[object] = [None, 0, 1, -1, 1.0, True, "", "x", [], {}, "3", "6f1c", "0" * 32]
    docs = [{**full, name: s} for name in ("occurred_at", "produced_at") for s in EDGE_TIMESTAMPS]
    docs += [{**full, name: v} for name in [*Envelope.model_fields, "extra"] for v in values]
    docs += [{k: v for k, v in full.items() if k != name} for name in full if name != "event_id"]
    accepted = 0
    for doc in docs:
        try:
            expected: Envelope | None = Envelope.model_validate(doc)
        except ValidationError:
            expected = None
        try:
            got: Envelope | None = read(doc)
        except ValidationError:
            got = None
        if expected is None:
            assert got is None or not isinstance(doc.get("payload"), dict), (doc, got)
            continue
        assert got is not None, doc
        accepted += 1
        assert type(got) is Envelope
        assert (got.__dict__, list(got.__dict__)) == (expected.__dict__, list(expected.__dict__)), doc
        assert got.model_fields_set == expected.model_fields_set
        assert type(got.occurred_at.tzinfo) is type(expected.occurred_at.tzinfo)
    assert accepted > 10


def test_the_parsed_json_validator_is_not_the_envelopes_own() -> None:
    """pydantic-core builds a model schema naming a complete model class with that class's own
    validator: the variant must be built as a variant (else its 2 us are gone, silently). Its
    payload is taken as it is (the caller checks it is a dict); the class is left complete."""
    from crm_contracts.envelope import parsed_json_validator

    payload = [1, 2]
    with pytest.raises(ValidationError):
        Envelope.model_validate(_doc(payload=payload))
    assert parsed_json_validator()(_doc(payload=payload)).payload is payload
    assert Envelope.__pydantic_complete__ is True
    assert Envelope.model_validate(_doc()).payload == {}
