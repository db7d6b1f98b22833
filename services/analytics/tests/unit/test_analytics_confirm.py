"""The changelog confirmer: events acked only once their writes are stored, many per wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from analytics.confirm import ChangelogConfirmer
from crm_platform.testing import eventually


class Acks:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def __call__(self, event: int) -> None:
        self.acked.append(event)


def futures(n: int) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


async def test_an_event_is_acked_only_once_every_write_it_made_is_stored() -> None:
    acks = Acks()
    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(acks, max_pending=100)
    confirmer.start()
    try:
        first, second = futures(2), futures(1)
        await confirmer.add(1, first)
        await confirmer.add(2, second)
        await confirmer.add(3, [])  # a fold that wrote nothing waits for its batch all the same
        for _ in range(5):
            await asyncio.sleep(0)
        assert acks.acked == [], "no write stored yet: nothing acked"
        first[0].set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert acks.acked == [], "one write of the batch still pending: nothing acked"
        first[1].set_result(None)
        second[0].set_result(None)
        await confirmer.drained()
        assert sorted(acks.acked) == [1, 2, 3]
    finally:
        await confirmer.stop()


async def test_the_events_folded_during_one_wait_share_the_next_wait() -> None:
    acks = Acks()
    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(acks, max_pending=1000)
    confirmer.start()
    try:
        head = futures(1)
        await confirmer.add(0, head)
        await asyncio.sleep(0)  # the confirmer takes event 0 and waits for its write
        rest = futures(50)
        for n, fut in enumerate(rest, start=1):
            await confirmer.add(n, [fut])
        head[0].set_result(None)
        for fut in rest:
            fut.set_result(None)
        await confirmer.drained()
        assert sorted(acks.acked) == list(range(51)), "every event acked exactly once"
        assert confirmer.batches == 2, "51 events, two waits for the broker"
    finally:
        await confirmer.stop()


async def test_a_failed_write_acks_nothing_of_its_batch_and_is_raised_at_the_next_event() -> None:
    acks = Acks()
    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(acks, max_pending=100)
    confirmer.start()
    try:
        ok, broken = futures(1), futures(1)
        await confirmer.add(1, ok)
        await confirmer.add(2, broken)
        ok[0].set_result(None)
        broken[0].set_exception(ConnectionError("changelog unavailable"))

        async def failed() -> bool:
            return confirmer.failure is not None

        await eventually(failed, what="the failure noticed")
        with pytest.raises(ConnectionError):
            await confirmer.add(3, [])
        with pytest.raises(ConnectionError):
            await confirmer.drained()
        assert acks.acked == [], "the batch with the failed write: none of its events acked"
    finally:
        await confirmer.stop()


async def test_the_agent_waits_for_room_once_max_pending_events_are_unconfirmed() -> None:
    acks = Acks()
    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(acks, max_pending=3)
    confirmer.start()
    try:
        head = futures(1)
        await confirmer.add(0, head)
        await asyncio.sleep(0)  # taken: the confirmer now waits for its write
        pending = futures(3)
        await confirmer.add(1, [pending[0]])
        await confirmer.add(2, [pending[1]])
        third = asyncio.ensure_future(confirmer.add(3, [pending[2]]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not third.done(), "three events wait for the broker: the agent waits too"
        head[0].set_result(None)
        await asyncio.wait_for(third, timeout=5)
        for fut in pending:
            fut.set_result(None)
        await confirmer.drained()
        assert sorted(acks.acked) == [0, 1, 2, 3]
    finally:
        await confirmer.stop()


async def test_stopping_leaves_the_unconfirmed_events_unacked() -> None:
    acks = Acks()
    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(acks, max_pending=100)
    confirmer.start()
    await confirmer.add(1, futures(1))
    await asyncio.sleep(0)
    await confirmer.stop()
    assert acks.acked == [], "they come again after a restart and fold to the same facts"


async def test_a_batch_is_acked_only_once_its_flush_is_stored() -> None:
    """With a flush (analytics.changelog), each batch calls it when taken and waits for it."""
    acked: list[int] = []
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    flushes = 0

    def flush() -> asyncio.Future[None]:
        nonlocal flushes
        flushes += 1
        return stored

    async def ack(event: int) -> None:
        acked.append(event)

    confirmer: ChangelogConfirmer[int] = ChangelogConfirmer(ack, max_pending=100, flush=flush)
    confirmer.start()
    await confirmer.add(1, ())
    await confirmer.add(2, ())
    await asyncio.sleep(0.01)
    assert flushes == 1
    assert acked == []
    stored.set_result(None)
    await confirmer.drained()
    assert acked == [1, 2]
    await confirmer.stop()
