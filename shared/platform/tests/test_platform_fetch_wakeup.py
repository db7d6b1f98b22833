"""Every fetch task wakes aiokafka's fetch routine when it ends (crm_platform.kafka.
wake_routine_after_fetches), on any broker: the routine woken for records taken just before a
fetch task's end can find the broker still in flight and would otherwise wait out its timeout
(docs/performance.md, twenty-sixth session, fetchtail). The race itself is provoked on the real
broker in tests/reliability/test_empty_fetch_pacing.py; these pin the mechanism."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from crm_platform import kafka as kafka_module
from crm_platform.liveness import harden_aiokafka


class _Routine:
    """What the wake-up reads of a fetcher: the future its routine waits on for records taken."""

    def __init__(self) -> None:
        self._wait_consume_future: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self.fetches = 0


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> Any:
    """aiokafka's fetch wrapped as harden_aiokafka wraps it (the fetch itself a stand-in that
    counts and, on its first call, sends the same request again in its own task, as a paced
    round does)."""

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> bool:
        self.fetches += 1
        if self.fetches == 1:
            await Fetcher._proc_fetch_request(self, *args, **kwargs)
        return False

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", fetch)
    monkeypatch.setattr(Fetcher, "_crm_looks_again", False, raising=False)
    kafka_module.wake_routine_after_fetches("test")
    return Fetcher._proc_fetch_request


async def test_a_fetch_task_that_ends_wakes_the_routine_waiting_for_records_taken(wrapped: Any) -> None:
    fetcher = _Routine()
    waiting = fetcher._wait_consume_future
    assert waiting is not None
    task = asyncio.create_task(wrapped(fetcher))
    assert await task is False
    await asyncio.sleep(0)  # the task's done callbacks
    assert waiting.done(), "the routine would wait out its timeout"
    assert fetcher.fetches == 2


async def test_a_task_that_fetches_again_in_itself_registers_one_wake_up(
    wrapped: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paced task sends its fetch again in itself, for as long as the consumer is idle: one
    callback per task, not one per fetch."""
    woken: list[Any] = []
    real = kafka_module._look_again

    def counting(fetcher: Any, task: Any) -> None:
        woken.append(task)
        real(fetcher, task)

    monkeypatch.setattr(kafka_module, "_look_again", counting)
    fetcher = _Routine()
    task = asyncio.create_task(wrapped(fetcher))
    await task
    await asyncio.sleep(0)
    assert fetcher.fetches == 2
    assert woken == [task]
    assert task not in kafka_module._looking_again, "forgotten once the task ended"


async def test_a_routine_with_nothing_to_wait_for_is_left_alone(wrapped: Any) -> None:
    fetcher = _Routine()
    fetcher._wait_consume_future = None
    await asyncio.create_task(wrapped(fetcher))
    await asyncio.sleep(0)  # the callback ran without a future to end
    assert fetcher.fetches == 2


def test_harden_aiokafka_installs_the_wake_up() -> None:
    harden_aiokafka()
    assert getattr(Fetcher, "_crm_looks_again", False) is True
