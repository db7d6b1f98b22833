"""Raw bytes -> a validated event, or the dead-letter reason (same reasons as the platform)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from analytics.domain.intake import Accepted, Rejected, dead_letter_headers, parse


def test_valid_envelope_is_accepted(journey):
    env = journey.qualified("lead-1")
    outcome = parse(env.to_bytes())
    assert isinstance(outcome, Accepted)
    assert outcome.envelope.event_id == env.event_id
    assert outcome.event.partition_key() == "lead-1"


def test_not_json_is_malformed():
    outcome = parse(b"\x00not json at all")
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "malformed"


def test_tombstone_is_malformed():
    assert parse(None) == Rejected("malformed", "empty message value (tombstone)")


def test_json_object_that_is_not_an_envelope_is_schema_invalid():
    outcome = parse(json.dumps({"hello": "world"}).encode())
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "schema_invalid"


def test_payload_violating_its_contract_is_schema_invalid(journey):
    doc = json.loads(journey.verdict("lead-1").to_bytes())
    doc["payload"]["verdict"] = "maybe"
    outcome = parse(json.dumps(doc).encode())
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.event_type) == ("schema_invalid", "lead.verdict")


def test_unknown_version_and_unknown_type(journey):
    doc = json.loads(journey.captured("lead-1").to_bytes())
    doc["schema_version"] = 99
    outcome = parse(json.dumps(doc).encode())
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "unknown_version"
    assert "known versions: [1]" in outcome.error
    doc["event_type"] = "lead.teleported"
    doc["schema_version"] = 1
    outcome = parse(json.dumps(doc).encode())
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "unknown_version"


def test_dead_letter_headers_keep_the_original_and_say_where_and_why():
    headers = dead_letter_headers(
        [("event_type", b"lead.captured"), ("dlq_reason", b"old")],
        reason="malformed",
        error="boom",
        consumer_group="crm-analytics",
        topic="crm.leads.events",
        partition=3,
        offset=42,
        failed_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    as_dict = dict(headers)
    assert as_dict["event_type"] == b"lead.captured"
    assert as_dict["dlq_reason"] == b"malformed"
    assert [k for k, _ in headers].count("dlq_reason") == 1
    assert as_dict["dlq_error"] == b"boom"
    assert as_dict["dlq_consumer_group"] == b"crm-analytics"
    assert as_dict["dlq_source_topic"] == b"crm.leads.events"
    assert as_dict["dlq_source_partition"] == b"3"
    assert as_dict["dlq_source_offset"] == b"42"


def test_dead_letter_headers_accept_a_mapping_or_none():
    assert (
        dict(
            dead_letter_headers(
                {"a": b"1"},
                reason="r",
                error="e",
                consumer_group="g",
                topic="t",
                partition=0,
                offset=0,
                failed_at=datetime(2025, 1, 1, tzinfo=UTC),
            )
        )["a"]
        == b"1"
    )
    assert (
        len(
            dead_letter_headers(
                None,
                reason="r",
                error="e",
                consumer_group="g",
                topic="t",
                partition=0,
                offset=0,
                failed_at=datetime(2025, 1, 1, tzinfo=UTC),
            )
        )
        == 7
    )
