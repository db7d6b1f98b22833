"""The one dead-letter classification: every malformed shape gets a reason, nothing raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV1
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_EVENTS
from crm_platform.dead_letters import MAX_DEPTH, Accepted, Rejected, classify


def _valid(**changes: Any) -> dict[str, Any]:
    event = LeadCapturedV1(
        lead_id="lead-1",
        email="lead-1@example.com",
        name="Ada",
        company="Acme",
        source_channel="web",
        consent=Consent(marketing_email=True),
        merged=False,
    )
    doc: dict[str, Any] = json.loads(envelope_for(event, source="leads", correlation_id="c").to_bytes())
    doc.update(changes)
    return doc


def _reason(raw: bytes | None, topic: str | None = LEADS_EVENTS) -> str:
    outcome = classify(raw, topic=topic)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.error
    return outcome.reason


def test_a_valid_envelope_is_accepted() -> None:
    assert isinstance(classify(json.dumps(_valid()).encode(), topic=LEADS_EVENTS), Accepted)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "malformed"),
        (b"", "malformed"),
        (b"\x00not json", "malformed"),
        (b'{"a": "\xff\xfe"}', "malformed"),
        (b"[1, 2]", "malformed"),
        (b'"a string"', "malformed"),
        (b"null", "malformed"),
        (b"12", "malformed"),
        (b'{"a": NaN}', "malformed"),
        (b'{"a": Infinity}', "malformed"),
        (b'{"a": 1e400}', "malformed"),
        (b'{"a": -1e309}', "malformed"),
        (b'{"a": ' + b"9" * 5000 + b"}", "malformed"),
        (b"[" * 1000 + b"]" * 1000, "too_deep"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "too_deep"),
        (b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b'{"a":' + b'{"b":' * 40 + b"1" + b"}" * 40 + b"}", "too_deep"),
        (b'{"a": "' + b"x" * (600 * 1024) + b'"}', "too_large"),
        (b'{"hello": "world"}', "schema_invalid"),
    ],
)
def test_malformed_shapes_get_a_reason(raw: bytes | None, reason: str) -> None:
    assert _reason(raw) == reason


def test_depth_limit_is_generous_for_real_documents() -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH - 2):
        nested = {"n": nested}
    assert _reason(json.dumps({"deep": nested}).encode()) == "schema_invalid", "parsed, then the contract"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("occurred_at", 12),
        ("occurred_at", "2026-01-01"),
        ("occurred_at", "2026-01-01T00:00:00"),
        ("event_id", 12),
        ("event_type", None),
        ("schema_version", "1"),
        ("schema_version", 0),
        ("source", ["leads"]),
        ("correlation_id", {}),
        ("partition_key", ""),
        ("payload", []),
        ("extra", "field"),
    ],
)
def test_wrong_types_for_envelope_fields_are_schema_invalid(field: str, value: object) -> None:
    assert _reason(json.dumps(_valid(**{field: value})).encode()) == "schema_invalid"


def test_wide_objects_and_huge_strings_under_the_limit_are_read() -> None:
    wide = {f"k{i}": i for i in range(20_000)}
    assert _reason(json.dumps(_valid(payload=wide)).encode()) == "schema_invalid"
    huge = classify(json.dumps(_valid(correlation_id="x" * 400_000)).encode(), topic=LEADS_EVENTS)
    assert isinstance(huge, Accepted), "a large but valid record is not refused for its size"


def test_unknown_version_and_forged_source() -> None:
    assert _reason(json.dumps(_valid(schema_version=99)).encode()) == "unknown_version"
    assert _reason(json.dumps(_valid(source="sales")).encode()) == "wrong_source"
    assert _reason(json.dumps(_valid()).encode(), topic=LEAD_QUALIFIED) == "wrong_source"
    assert isinstance(classify(json.dumps(_valid(source="x")).encode(), topic="crm.test.scratch"), Accepted)


@pytest.mark.parametrize(
    "when",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime.now(UTC) + timedelta(days=1),
        datetime(9999, 1, 1, tzinfo=UTC),
    ],
)
def test_implausible_times_are_dead_lettered(when: datetime) -> None:
    assert _reason(json.dumps(_valid(occurred_at=when.isoformat())).encode()) == "implausible_time"


def test_nothing_raises_out_of_classification(monkeypatch: pytest.MonkeyPatch) -> None:
    import crm_platform.dead_letters as module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(module, "wrong_source", broken)
    assert _reason(json.dumps(_valid()).encode()) == "unreadable"
