"""The outbox relay's producer batches are compressed (zstd unless CRM_OUTBOX_COMPRESSION says
otherwise): an import's lead.captured JSON packs about 5 to 1, and the embedded broker's CPU
follows the bytes it keeps (docs/performance.md, "Tenth session, import"). No broker here: the
batch is built as the relay builds it and its bytes read."""

from __future__ import annotations

import struct

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.leads import LeadCapturedV2
from crm_platform.outbox import OutboxRelay, wire_record
from crm_platform.settings import ServiceSettings

CODEC = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def _lead_captured(n: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    event = LeadCapturedV2(
        lead_id=f"0193a1b2-0000-7000-8000-{n:012d}",
        email=f"person-{n}@bench.example",
        name=f"Person {n}",
        company=f"Company {n % 500}",
        source_channel="import",
        merged=False,
        consent={"marketing_email": n % 2 == 0, "captured_at": "2026-12-06T02:00:00Z"},
    )
    env = envelope_for(event, source="leads", correlation_id=event.lead_id)
    value, headers = wire_record(env.model_dump(mode="json"), "2026-12-06T02:00:01Z")
    return event.lead_id.encode(), value, headers


async def _batch(relay: OutboxRelay, records: int) -> tuple[str, int, int]:
    """The codec of a producer batch of ``records`` lead.captured, its bytes, the values' bytes."""
    producer = relay.new_producer()
    builder = producer.create_batch()
    plain = 0
    for n in range(records):
        key, value, headers = _lead_captured(n)
        assert builder.append(timestamp=None, key=key, value=value, headers=headers) is not None
        plain += len(value)
    wire = bytes(builder._build())  # what send_batch hands the broker (aiokafka pinned: 0.14.0)
    (attributes,) = struct.unpack_from(">h", wire, 21)  # the v2 batch header's attributes
    await producer.stop()
    return CODEC[attributes & 0x07], len(wire), plain


async def test_the_relay_sends_zstd_batches_a_fraction_of_the_events_bytes() -> None:
    relay = OutboxRelay(None, bootstrap="127.0.0.1:1", service="leads")  # type: ignore[arg-type]  # no database
    codec, size, plain = await _batch(relay, 200)
    assert codec == "zstd"
    assert size < plain / 3


async def test_no_compression_when_the_setting_says_none() -> None:
    relay = OutboxRelay(None, bootstrap="127.0.0.1:1", service="leads", compression=None)  # type: ignore[arg-type]
    codec, size, plain = await _batch(relay, 50)
    assert codec == "none"
    assert size > plain


@pytest.mark.parametrize(("given", "expected"), [(None, "zstd"), ("lz4", "lz4"), ("none", "none")])
def test_the_setting_names_the_relays_codec(
    monkeypatch: pytest.MonkeyPatch, given: str | None, expected: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1")
    if given is None:
        monkeypatch.delenv("CRM_OUTBOX_COMPRESSION", raising=False)
    else:
        monkeypatch.setenv("CRM_OUTBOX_COMPRESSION", given)
    assert ServiceSettings().outbox_compression == expected
