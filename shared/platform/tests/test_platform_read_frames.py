"""aiokafka's reader loop, as ``crm_platform.kafka.release_read_frames`` leaves it: a response
frame is handled and then let go, not kept until the next frame arrives (the embedded broker
sends a partition's whole backlog in one fetch response: docs/performance.md, thirteenth
session, drain)."""

from __future__ import annotations

import asyncio
import struct
import time
import weakref
from typing import Any

import aiokafka
import pytest
from aiokafka.conn import AIOKafkaConnection
from crm_platform.aiokafka_compat import UnsupportedAiokafka
from crm_platform.kafka import release_read_frames

FRAME = 256 * 1024


class _Connection:
    """What the reader loop uses of a connection: its stream and the frame handler."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.handled: list[int] = []

    def _handle_frame(self, frame: bytes) -> None:
        self.handled.append(len(frame))


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the reader did not get there in time"
        await asyncio.sleep(0.001)


def _held_bytes(task: asyncio.Task[None]) -> list[int]:
    """The sizes of the bytes objects the suspended reader's frame refers to by name."""
    frame = task.get_coro().cr_frame  # type: ignore[union-attr]
    return [len(v) for v in frame.f_locals.values() if isinstance(v, bytes | bytearray)]


async def test_a_handled_frame_is_not_kept_while_the_next_is_awaited() -> None:
    release_read_frames()
    reader = asyncio.StreamReader()
    connection = _Connection(reader)
    task = asyncio.create_task(AIOKafkaConnection._read(weakref.ref(connection)))
    try:
        reader.feed_data(struct.pack(">i", FRAME) + bytes(FRAME))
        await _until(lambda: connection.handled == [FRAME])
        await asyncio.sleep(0)  # the reader is back waiting for the next frame's size
        assert not task.done()
        assert FRAME not in _held_bytes(task)
        reader.feed_data(struct.pack(">i", 3) + b"abc")  # and it still reads the next one
        await _until(lambda: connection.handled == [FRAME, 3])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_release_read_frames_refuses_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AIOKafkaConnection, "_crm_frames_released", False, raising=False)
    read = AIOKafkaConnection.__dict__["_read"]
    monkeypatch.setattr(AIOKafkaConnection, "_read", read)
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    with pytest.raises(UnsupportedAiokafka, match="release_read_frames"):
        release_read_frames()
    assert AIOKafkaConnection.__dict__["_read"] is read
