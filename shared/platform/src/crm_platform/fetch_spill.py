"""A fetched partition's record batches beyond what Kafka would send, kept in a temporary file.

The embedded broker answers a fetch with everything a partition holds from the position, whatever
``max_partition_fetch_bytes`` says (docs/performance.md, thirteenth session, drain): a consumer
starting on a backlog held each partition's whole remainder (28.6 MB of compressed batches for
sales draining 100,000 sealed handoffs and their keys, until each partition's last record was
handed out) and the analytics worker its whole replay. Kafka sends at most
``max_partition_fetch_bytes`` (1 MiB by default) per partition and fetch.

:func:`spill_large_fetches` makes aiokafka's fetcher keep a partition's fetched batches of
:data:`SPILL_BYTES` or more in an unlinked temporary file (:class:`SpilledRecords`) and read them
back whole batches at a time, :data:`WINDOW_BYTES` at most per read: the same batches, in the same
order, handed out the same way, with one window per such partition in memory. Where the file
cannot be written (no space, no writable temporary directory) the batches stay in memory, as
before. Only against the embedded broker (services apply it where they spread backlog fetches):
against Kafka no partition's answer reaches :data:`SPILL_BYTES`.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections import deque
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.memory_records import MemoryRecords

from crm_platform.aiokafka_compat import require_patchable

log = logging.getLogger("crm.kafka")

# aiokafka's default ``max_partition_fetch_bytes``: the most Kafka sends of one partition per fetch.
SPILL_BYTES = 1024 * 1024
# The batches read back from the file at a time (at least one whole batch).
WINDOW_BYTES = 256 * 1024
_LOG_OVERHEAD = 12  # a batch's base offset (8 bytes) and length (4 bytes), before its length's bytes


def batch_windows(data: bytes | memoryview, window: int = WINDOW_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive runs of whole record batches, each at most ``window`` bytes
    unless a single batch is larger; the last run also holds any incomplete batch at the end (as
    a fetch response may), which aiokafka's ``MemoryRecords`` leaves unread as it does in place."""
    size = len(data)
    start = pos = 0
    while pos + _LOG_OVERHEAD <= size:
        end = pos + _LOG_OVERHEAD + struct.unpack_from(">i", data, pos + 8)[0]
        if end > size:
            break
        if end - start > window and pos > start:
            yield start, pos
            start = pos
        pos = end
    if start < size:
        yield start, size


class SpilledRecords:
    """aiokafka's ``MemoryRecords`` (``has_next``, ``next_batch``, ``size_in_bytes``) over batches
    kept in an unlinked temporary file, read back a window of whole batches at a time; the file is
    closed once its last batch is handed out (or with this object)."""

    def __init__(self, data: bytes, window: int = WINDOW_BYTES, directory: str | None = None) -> None:
        self._size = len(data)
        self._windows = deque(batch_windows(data, window))
        self._fd: int | None = None
        self._fd = _unlinked_file(directory)
        try:
            _write_all(self._fd, data)
        except OSError:
            self.close()
            raise
        self._current: Any = MemoryRecords(b"")

    def size_in_bytes(self) -> int:
        return self._size

    def has_next(self) -> bool:
        while not self._current.has_next():
            if not self._windows or self._fd is None:
                self.close()
                return False
            start, end = self._windows.popleft()
            self._current = MemoryRecords(os.pread(self._fd, end - start, start))
        return True

    def next_batch(self) -> Any:
        return self._current.next_batch() if self.has_next() else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a partition dropped unread (a seek, a lost assignment)
        self.close()


def _unlinked_file(directory: str | None) -> int:
    fd, path = tempfile.mkstemp(prefix="crm-fetched-", dir=directory)
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fetched_records(data: bytes) -> Any:
    """What aiokafka's fetcher builds of a partition's fetched batches: in memory below
    :data:`SPILL_BYTES`, else :class:`SpilledRecords` (in memory if the file cannot be written)."""
    if len(data) < SPILL_BYTES:
        return MemoryRecords(data)
    try:
        return SpilledRecords(data)
    except OSError as exc:
        log.warning("fetched batches of %d bytes kept in memory: no temporary file (%s)", len(data), exc)
        return MemoryRecords(data)


def spill_large_fetches() -> None:
    """Make aiokafka's fetcher (every consumer of this process) build each partition's fetched
    batches with :func:`fetched_records`. Idempotent, process-wide; raises
    :class:`crm_platform.aiokafka_compat.UnsupportedAiokafka` on an aiokafka it was not written for."""
    if aiokafka_fetcher.MemoryRecords is fetched_records:
        return
    require_patchable("crm_platform.fetch_spill.spill_large_fetches (aiokafka's fetcher.MemoryRecords)")
    aiokafka_fetcher.MemoryRecords = fetched_records
