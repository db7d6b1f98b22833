"""``crm_platform.fetch_spill``: a fetched partition of ``SPILL_BYTES`` or more (the embedded broker
sends a partition's whole remainder, whatever the fetch sizes say) is kept in a temporary file and
read back a window of whole batches at a time: the same records, in order, with one window in
memory (docs/performance.md, fifteenth session, memory)."""

from __future__ import annotations

import os
import struct
import tempfile
import tracemalloc
from typing import Any

import aiokafka
import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from crm_platform import fetch_spill
from crm_platform.aiokafka_compat import UnsupportedAiokafka
from crm_platform.fetch_spill import SPILL_BYTES, WINDOW_BYTES, SpilledRecords, batch_windows, fetched_records


def _batch(base: int, count: int = 50, size: int = 300) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=10**7,
    )
    for i in range(count):
        builder.append(i, timestamp=1000 + i, key=b"k%d" % (base + i), value=os.urandom(size), headers=[])
    built = bytearray(builder.build())
    struct.pack_into(">q", built, 0, base)  # the batch's base offset, as the broker sets it
    return bytes(built)


def _partition(total: int) -> bytes:
    batches, size, base = [], 0, 0
    while size < total:
        batches.append(_batch(base))
        size += len(batches[-1])
        base += 50
    return b"".join(batches)


def _records(records: Any) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    while records.has_next():
        out += [(r.offset, r.key, r.value) for r in records.next_batch()]
    return out


def test_the_spilled_partition_hands_out_the_same_records_in_order() -> None:
    data = _partition(SPILL_BYTES + 1)
    cut = data + data[:100]  # a fetch may end inside a batch: that one stays unread, as in place
    for window in (1, 20_000, WINDOW_BYTES, 10 * SPILL_BYTES):
        spilled = SpilledRecords(cut, window=window)
        assert spilled.size_in_bytes() == len(cut)
        assert _records(spilled) == _records(MemoryRecords(cut))
        assert spilled.next_batch() is None
    assert len(_records(MemoryRecords(cut))) == len(data) // len(_batch(0)) * 50


def test_windows_are_whole_batches_at_most_the_window_unless_one_batch_is_larger() -> None:
    size = len(_batch(0))
    data = _batch(0) * 10
    threes = [(i * size, (i + 3) * size) for i in (0, 3, 6)]
    assert list(batch_windows(data, 3 * size)) == [*threes, (9 * size, 10 * size)]
    assert list(batch_windows(data, 1)) == [(i * size, (i + 1) * size) for i in range(10)]
    assert list(batch_windows(data + data[:20], 10 * size)) == [(0, 10 * size + 20)]


def test_a_large_partition_is_held_a_window_at_a_time_not_whole() -> None:
    tracemalloc.start()
    try:
        data = _partition(4 * SPILL_BYTES)
        expected = len(_records(MemoryRecords(data)))
        records = fetched_records(data)
        del data  # what the fetcher drops once the response is decoded
        assert records.has_next()
        # In place, the records keep the partition's 4 MiB for as long as any of them is left.
        assert tracemalloc.get_traced_memory()[0] < 2 * WINDOW_BYTES
        count = 0
        while records.has_next():
            count += sum(1 for _ in records.next_batch())
            assert tracemalloc.get_traced_memory()[0] < 2 * WINDOW_BYTES
    finally:
        tracemalloc.stop()
    assert count == expected


def test_the_file_is_closed_once_the_last_batch_is_handed_out(tmp_path: Any) -> None:
    records = SpilledRecords(_partition(SPILL_BYTES), directory=str(tmp_path))
    fd = records._fd if records._fd is not None else -1
    os.fstat(fd)
    _records(records)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert list(tmp_path.iterdir()) == []  # unlinked from the start


def test_a_small_partition_stays_in_memory() -> None:
    assert isinstance(fetched_records(_batch(0)), MemoryRecords)


def test_without_a_temporary_file_the_batches_stay_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_file(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_file)
    data = _partition(SPILL_BYTES)
    records = fetched_records(data)
    assert isinstance(records, MemoryRecords)
    assert _records(records) == _records(MemoryRecords(data))


def test_aiokafkas_fetcher_builds_its_records_with_the_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiokafka_fetcher, "MemoryRecords", MemoryRecords)
    fetch_spill.spill_large_fetches()
    fetch_spill.spill_large_fetches()
    assert aiokafka_fetcher.MemoryRecords is fetched_records


def test_the_spill_refuses_another_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiokafka_fetcher, "MemoryRecords", MemoryRecords)
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    with pytest.raises(UnsupportedAiokafka, match="spill_large_fetches"):
        fetch_spill.spill_large_fetches()
    assert aiokafka_fetcher.MemoryRecords is MemoryRecords


@pytest.mark.parametrize(("idle_backoff_ms", "spilled"), [(100, True), (0, False)])
def test_services_spill_only_against_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, idle_backoff_ms: int, spilled: bool
) -> None:
    from crm_platform import runtime

    called: list[str] = []
    for name in ("pace_empty_fetches", "harden_aiokafka", "release_read_frames", "spread_backlog_fetches"):
        monkeypatch.setattr(runtime, name, lambda *args, name=name: called.append(name))
    monkeypatch.setattr(runtime, "spill_large_fetches", lambda: called.append("spill"))
    runtime._patch_aiokafka(idle_backoff_ms)
    assert ("spill" in called) is spilled
