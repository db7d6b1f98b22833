"""The liveness watchdog's stall rule and the aiokafka hardening, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from crm_platform import kafka
from crm_platform.kafka import pace_empty_fetches
from crm_platform.liveness import StallDetector, behind, harden_aiokafka

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_a_partition_with_lag_and_no_commit_progress_is_stalled_after_the_window() -> None:
    d = StallDetector(stall_seconds=10)
    assert d.observe(0, {A: 5}, {A: 9}) == []
    assert d.observe(9.9, {A: 5}, {A: 12}) == [], "not yet: under the window"
    assert d.observe(10, {A: 5}, {A: 12}) == [A]


def test_commit_progress_restarts_the_clock() -> None:
    d = StallDetector(stall_seconds=10)
    d.observe(0, {A: 5}, {A: 9})
    d.observe(8, {A: 6}, {A: 9})
    assert d.observe(17, {A: 6}, {A: 9}) == []
    assert d.observe(18, {A: 6}, {A: 9}) == [A]


def test_an_idle_partition_is_never_stalled() -> None:
    d = StallDetector(stall_seconds=10)
    for t in range(0, 100, 5):
        assert d.observe(t, {A: 7, B: None}, {A: 7, B: 0}) == []


def test_a_partition_never_committed_counts_from_offset_zero() -> None:
    d = StallDetector(stall_seconds=10)
    d.observe(0, {A: None}, {A: 3})
    assert d.observe(10, {A: None}, {A: 3}) == [A]


def test_records_gone_below_the_committed_offset_are_not_lag() -> None:
    """Retention or delete-records took the log past the group's committed offset: a consumer
    there has nothing to read and never commits again; counting from the stale offset would
    stall it (and every restart) forever."""
    assert behind(2, 9, start=9) == 0
    assert behind(None, 9, start=9) == 0
    assert behind(2, 9, start=5) == 4, "what is left after the start is still lag"
    assert behind(7, 9, start=5) == 2
    d = StallDetector(stall_seconds=10)
    for t in range(0, 100, 5):
        assert d.observe(t, {A: 2, B: None}, {A: 9, B: 4}, {A: 9, B: 4}) == []
    d.observe(100, {A: 2}, {A: 12}, {A: 9})  # new records after the start: lag again
    assert d.observe(110, {A: 2}, {A: 12}, {A: 9}) == [A]


def test_lag_that_appears_later_starts_its_own_clock() -> None:
    d = StallDetector(stall_seconds=10)
    d.observe(0, {A: 7}, {A: 7})
    d.observe(50, {A: 7}, {A: 8})  # a new record at 50
    assert d.observe(59, {A: 7}, {A: 8}) == []
    assert d.observe(60, {A: 7}, {A: 8}) == [A]


def test_forget_and_revoked_partitions_start_afresh() -> None:
    d = StallDetector(stall_seconds=10)
    d.observe(0, {A: 1, B: 1}, {A: 5, B: 5})
    d.observe(5, {A: 1}, {A: 5})  # B revoked: forgotten
    assert d.observe(10, {A: 1, B: 1}, {A: 5, B: 5}) == [A]
    d.forget()
    assert d.observe(15, {A: 1, B: 1}, {A: 5, B: 5}) == []
    assert d.observe(25, {A: 1, B: 1}, {A: 5, B: 5}) == [A, B]


def test_a_member_busy_with_other_partitions_is_slow_not_stalled() -> None:
    # A loaded machine: the worker works through B's backlog while A's records wait their
    # turn. B's committed offset moves every 5 s, A's not at all.
    d = StallDetector(stall_seconds=10)
    for t in range(0, 35, 5):
        assert d.observe(t, {A: 3, B: t}, {A: 9, B: 100}) == [], f"A waiting its turn at {t} s"
    # Once nothing moves any more (B last moved at 30 s), the window applies to every
    # lagging partition.
    assert d.observe(39, {A: 3, B: 30}, {A: 9, B: 100}) == []
    assert d.observe(40, {A: 3, B: 30}, {A: 9, B: 100}) == [A, B]


def test_a_partition_left_behind_while_others_move_is_stalled_after_five_windows() -> None:
    d = StallDetector(stall_seconds=10)
    for t in range(0, 50, 5):
        assert d.observe(t, {A: 3, B: t}, {A: 9, B: 100}) == []
    assert d.observe(50, {A: 3, B: 50}, {A: 9, B: 100}) == [A], "a fetch stuck on A alone"


# --- aiokafka hardening: a close() whose cancel is swallowed -------------------------------


async def _swallows_first_cancel() -> None:
    # What aiokafka's fetch routine does when a close() lands while it waits for its
    # cancelled requests inside contextlib.suppress(CancelledError): it carries on.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)


def _fetcher_with(task: asyncio.Task[None]) -> Fetcher:
    fetcher = object.__new__(Fetcher)  # only what close() touches
    fetcher._fetch_task = task
    fetcher._fetch_waiters = set()
    fetcher._pending_tasks = set()
    return fetcher


async def test_fetcher_close_returns_when_its_routine_swallows_the_cancel() -> None:
    harden_aiokafka()
    task = asyncio.create_task(_swallows_first_cancel())
    await asyncio.sleep(0)
    closing = asyncio.create_task(Fetcher.close(_fetcher_with(task)))
    # asyncio.wait, not wait_for: a timeout must not cancel close() (that second cancel
    # would end the routine and hide the hang).
    done, _ = await asyncio.wait([closing], timeout=5)
    for leftover in (closing, task):
        leftover.cancel()
    assert closing in done, "Fetcher.close() hung on a routine that swallowed its cancel"
    assert task.done()


async def test_a_paced_fetch_that_was_cancelled_returns_at_once() -> None:
    async def fetch(self: Any, *args: Any) -> bool:
        try:
            await asyncio.sleep(30)  # waiting for the broker's answer
        except asyncio.CancelledError:
            return False  # aiokafka's _proc_fetch_request swallows it like this
        return True

    saved = Fetcher.__dict__.get("_proc_fetch_request")
    saved_pause = kafka._empty_fetch_pause
    paced_flag = Fetcher.__dict__.get("_crm_paced")
    Fetcher._proc_fetch_request = fetch
    if paced_flag is not None:
        del Fetcher._crm_paced
    try:
        pace_empty_fetches(2000)
        task = asyncio.create_task(Fetcher._proc_fetch_request(object.__new__(Fetcher)))
        await asyncio.sleep(0.05)
        task.cancel()
        started = time.monotonic()
        await asyncio.wait([task], timeout=5)
        assert time.monotonic() - started < 1, "no empty-fetch pause after a cancel"
    finally:
        kafka._empty_fetch_pause = saved_pause
        Fetcher._proc_fetch_request = saved
        if paced_flag is not None:
            Fetcher._crm_paced = paced_flag
        elif "_crm_paced" in Fetcher.__dict__:
            del Fetcher._crm_paced
