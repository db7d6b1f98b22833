"""A seeded generator of malformed Kafka records, and builders of valid handoffs.

Every generated record must be dead-lettered by every consumer of its topic: each
one is checked against the platform's classification when it is made (a generator
that made a valid record would be a bug here), and carries a ``x-fuzz-id`` header
so its dead letters can be counted whatever its key.

Shapes: deep nesting of objects, arrays and both (inside and outside an envelope),
wide objects, huge strings, huge and odd numbers (NaN, Infinity, 1e309, integers of
thousands of digits), a wrong type for each envelope field, integer and other
non-RFC 3339 timestamps, implausible times, a wrong source or event type for the
topic, unknown versions, invalid UTF-8, empty values and tombstones, non-object
JSON, payloads breaking their contract, odd keys and headers.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_contracts import ALL_EVENTS, REGISTRY, Envelope, envelope_for, utcnow
from crm_contracts.events.common import Behaviour, Consent, Contact, Money
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import DealWonV1, LeadVerdictV1, Product, Verdict
from crm_contracts.events.service_desk import SignalKind, UpsellSpottedV1
from crm_contracts.topics import ACCOUNT_SIGNAL, DEAL_WON, LEAD_QUALIFIED, LEAD_VERDICT, TOPICS_BY_NAME
from crm_platform.dead_letters import MAX_RECORD_BYTES, Rejected, classify

FUZZ_HEADER = "x-fuzz-id"
Doc = dict[str, Any]


@dataclass(frozen=True)
class FuzzRecord:
    fuzz_id: str
    shape: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str  # what the platform's classification says


def _base(rng: random.Random, topic: str) -> Doc:
    """An envelope that is right for ``topic`` except its (empty) payload."""
    event = rng.choice([e for e in ALL_EVENTS if e.topic == topic])
    source = rng.choice(sorted(TOPICS_BY_NAME[topic].sources()))
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_type": event.event_type,
        "schema_version": event.version,
        "occurred_at": (utcnow() - timedelta(seconds=rng.randint(0, 3600))).isoformat(),
        "produced_at": None,
        "source": source,
        "correlation_id": f"fuzz-{rng.getrandbits(32)}",
        "causation_id": None,
        "partition_key": f"fuzz-{rng.getrandbits(32)}",
        "payload": {},
    }


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _nest(rng: random.Random, depth: int) -> Any:
    node: Any = rng.choice([1, "x", None, True])
    for _ in range(depth):
        node = [node] if rng.random() < 0.5 else {rng.choice("abc"): node}
    return node


def deep(rng: random.Random, topic: str) -> bytes:
    depth = rng.choice([33, 40, 64, 150, 199, 250, 1000, 2500])
    kind = rng.randrange(4)
    if kind == 0:
        return b"[" * depth + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    doc = _base(rng, topic)
    field = "payload" if kind == 2 else "correlation_id"
    if depth < 400:  # json.dumps recurses too
        doc[field] = {"nested": _nest(rng, depth)}
        return _dump(doc)
    doc[field] = "__DEEP__"
    return _dump(doc).replace(b'"__DEEP__"', b'{"a":' * depth + b"[]" + b"}" * depth)


def wide(rng: random.Random, topic: str) -> bytes:
    width = rng.choice([100, 1000, 3000])
    doc = _base(rng, topic)
    if rng.random() < 0.5:
        doc["payload"] = {f"k{i}": i for i in range(width)}
    else:
        doc.update({f"extra{i}": "v" for i in range(width)})
    return _dump(doc)


def huge_string(rng: random.Random, topic: str) -> bytes:
    size = rng.choice([10_000, 50_000, MAX_RECORD_BYTES + 1000])
    doc = _base(rng, topic)
    field = rng.choice(["schema_version", "payload", "occurred_at", "unexpected"])
    doc[field] = "x" * size
    return _dump(doc)


def odd_number(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    literal = rng.choice(
        [
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1e309",
            b"-1e400",
            b"9" * 5000,
            b"1" + b"0" * 4400,
            b"1e308",
            b"-0",
        ]
    )
    field = rng.choice(["schema_version", "occurred_at", "payload", "source"])
    doc[field] = "__NUMBER__"
    return _dump(doc).replace(b'"__NUMBER__"', literal)


WRONG_VALUES: tuple[Any, ...] = (12, -1, 0, 1.5, True, False, None, [], ["x"], {}, {"a": 1}, "", "x")


def wrong_type(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    field = rng.choice(sorted(doc))
    doc[field] = rng.choice(WRONG_VALUES)
    if rng.random() < 0.2:
        del doc[field]
    return _dump(doc)


def bad_timestamp(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    field = rng.choice(["occurred_at", "produced_at"])
    doc[field] = rng.choice(
        [12, 0, 1733300000, 1733300000.5, -5, "12", "2026-01-01", "2026-01-01T00:00:00", "yesterday", "1e3"]
    )
    return _dump(doc)


def implausible_time(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    when = rng.choice(
        [
            datetime(1970, 1, 1, 0, 0, 12, tzinfo=UTC),
            datetime(1999, 12, 31, tzinfo=UTC),
            utcnow() - timedelta(days=4 * 365),
            utcnow() + timedelta(hours=rng.randint(1, 10_000)),
            datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
        ]
    )
    field = rng.choice(["occurred_at", "produced_at"])
    doc[field] = when.isoformat()
    return _dump(doc)


def wrong_source(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    if rng.random() < 0.5:
        doc["source"] = rng.choice(
            [
                "analytics",
                "gateway",
                "attacker",
                *(s for s in ("leads", "sales", "service-desk") if s not in TOPICS_BY_NAME[topic].sources()),
            ]
        )
    else:
        doc["event_type"] = rng.choice([e.event_type for e in ALL_EVENTS if e.topic != topic])
    return _dump(doc)


def unknown_version(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    if rng.random() < 0.7:
        # The first version this build does not know (deal.won has a v2), then far-off ones.
        unknown = 1 + max(v for (t, v) in REGISTRY if t == doc["event_type"])
        doc["schema_version"] = rng.choice([unknown, 7, 99, 2**31, 2**63 + 1])
    else:
        doc["event_type"] = rng.choice(["lead.teleported", "x", "deal.lost.v2", "ü"])
    return _dump(doc)


def invalid_utf8(rng: random.Random, topic: str) -> bytes:
    if rng.random() < 0.5:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) + b"\xff"
    return _dump(_base(rng, topic)).replace(b'"fuzz-', b'"\xff\xfe-', 1)


def empty(rng: random.Random, topic: str) -> bytes | None:
    return rng.choice([b"", None, b" ", b"\n", b"{", b"}"])


def not_an_object(rng: random.Random, topic: str) -> bytes:
    return rng.choice(
        [b"[]", b"[1,2,3]", b"12", b'"text"', b"null", b"true", b"-0.5", _dump([_base(rng, topic)])]
    )


def bad_payload(rng: random.Random, topic: str) -> bytes:
    doc = _base(rng, topic)
    doc["payload"] = rng.choice([{}, {"lead_id": 12}, {"unexpected": True}, {"occurred_at": 12}])
    return _dump(doc)


SHAPES: dict[str, Callable[[random.Random, str], bytes | None]] = {
    "deep": deep,
    "wide": wide,
    "huge_string": huge_string,
    "odd_number": odd_number,
    "wrong_type": wrong_type,
    "bad_timestamp": bad_timestamp,
    "implausible_time": implausible_time,
    "wrong_source": wrong_source,
    "unknown_version": unknown_version,
    "invalid_utf8": invalid_utf8,
    "empty": empty,
    "not_an_object": not_an_object,
    "bad_payload": bad_payload,
}
# Big records are few: the point is their shape, and the broker stores every byte (the
# embedded one rewrites its whole state file as it grows, slowing every later suite).
WEIGHTS = {"wide": 0.05, "huge_string": 0.002}


def _key(rng: random.Random, fuzz_id: str) -> bytes | None:
    return rng.choice([fuzz_id.encode(), None, b"", b"\xff\xfe\x00", b"k" * 1000])


def _headers(rng: random.Random, fuzz_id: str) -> list[tuple[str, bytes]]:
    marker = [(FUZZ_HEADER, fuzz_id.encode())]
    odd = rng.choice(
        [
            [],
            [("event_type", b"lead.qualified")],
            [("event_type", b"\xff\xfe")],
            [("schema_version", b"not a number")],
            [("dlq_reason", b"forged")],
            [("", b"")],
            [("x" * 200, b"y" * 1000)],
        ]
    )
    return [*odd, *marker]


def generate(count: int, topics: list[str], *, seed: int, run: str) -> list[FuzzRecord]:
    """``count`` malformed records spread over ``topics``, every shape on every topic."""
    rng = random.Random(seed)
    names = sorted(SHAPES)
    weights = [WEIGHTS.get(n, 1.0) for n in names]
    records = []
    for n in range(count):
        topic = topics[n % len(topics)]
        # The first rounds cover every shape on every topic; then at random.
        index = n // len(topics)
        shape = names[index] if index < len(names) else rng.choices(names, weights)[0]
        value = SHAPES[shape](rng, topic)
        fuzz_id = f"fuzz-{run}-{n}"
        verdict = classify(value, topic=topic)
        assert isinstance(verdict, Rejected), f"the generator made a valid record ({shape}): {value!r:.200}"
        # A tombstone needs a key, and so does every record of a compacted topic (Kafka refuses a
        # keyless one at produce time: no consumer can ever see it).
        compacted = TOPICS_BY_NAME[topic].cleanup_policy == "compact"
        key = _key(rng, fuzz_id) if value is not None and not compacted else fuzz_id.encode()
        records.append(FuzzRecord(fuzz_id, shape, topic, key, value, _headers(rng, fuzz_id), verdict.reason))
    return records


# -- valid handoffs, one per partition afterwards -------------------------------
def valid_handoff(topic: str, run: str, n: int) -> Envelope:
    """A handoff its receiver can store (or, for signals about unknown records, refuse by rule)."""
    ident = f"{run}-{n}"
    if topic == LEAD_QUALIFIED:
        event: Any = LeadQualifiedV1(
            lead_id=f"lead-{ident}",
            contact=Contact(name="Ada Lovelace", email=f"ada-{ident}@example.com"),
            company="Acme",
            score=80.0,
            threshold=50.0,
            score_reasons=[],
            source_channel="web",
            behaviour_summary={Behaviour.PAGE_VIEW: 3},
            consent=Consent(marketing_email=True),
            qualified_at=utcnow(),
        )
        return envelope_for(event, source="leads", correlation_id=f"lead-{ident}")
    if topic == DEAL_WON:
        event = DealWonV1(
            deal_id=f"deal-{ident}",
            account_name="Acme",
            contacts=[Contact(name="Ada Lovelace", email=f"ada-{ident}@example.com")],
            products=[Product(sku="CRM", name="CRM", quantity=1, unit_price=10.0)],
            value=Money(amount=10.0),
            commitments=[],
            sales_owner="sam.sales",
            won_at=utcnow(),
        )
        return envelope_for(event, source="sales", correlation_id=f"deal-{ident}")
    if topic == LEAD_VERDICT:
        event = LeadVerdictV1(lead_id=f"lead-{ident}", verdict=Verdict.ACCEPTED, decided_by="sam.sales")
        return envelope_for(event, source="sales", correlation_id=f"lead-{ident}")
    if topic == ACCOUNT_SIGNAL:
        event = UpsellSpottedV1(
            signal_id=f"signal-{ident}",
            account_id=f"account-{ident}",
            deal_id=f"deal-{ident}",
            account_name="Acme",
            sales_owner="sam.sales",
            kind=SignalKind.UPSELL,
            description="more seats",
            spotted_by="cara.csm",
        )
        return envelope_for(event, source="service-desk", correlation_id=f"deal-{ident}")
    raise ValueError(f"no handoff on {topic}")
