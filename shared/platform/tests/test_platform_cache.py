"""The configuration cache (crm_platform.cache.TtlCache), no I/O: a stepped clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from crm_platform.cache import TtlCache, invalidations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loader(values: list[int]) -> tuple[Callable[[], Awaitable[int]], dict[str, int]]:
    calls = {"n": 0}

    async def load() -> int:
        calls["n"] += 1
        return values[min(calls["n"], len(values)) - 1]

    return load, calls


async def test_a_value_is_loaded_once_then_served_until_it_expires() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock)
    load, calls = loader([1, 2])
    assert await cache.get("sla", load) == 1
    clock.now += 4.9
    assert await cache.get("sla", load) == 1
    assert calls["n"] == 1
    assert cache.hits == 1
    clock.now += 0.2
    assert await cache.get("sla", load) == 2
    assert calls["n"] == 2


async def test_ttl_zero_turns_caching_off() -> None:
    cache: TtlCache[str, int] = TtlCache(0.0, Clock())
    load, calls = loader([1, 2, 3])
    assert [await cache.get("k", load) for _ in range(3)] == [1, 2, 3]
    assert calls["n"] == 3


async def test_invalidate_forgets_values() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, Clock())
    load, _ = loader([1, 2])
    await cache.get("k", load)
    cache.invalidate()
    assert await cache.get("k", load) == 2


async def test_an_uncacheable_read_is_not_kept_and_does_not_use_the_kept_value() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, Clock())
    load, calls = loader([1, 2, 3])
    await cache.get("k", load)
    # A transaction that wrote the value reads its own (uncommitted) write.
    assert await cache.get("k", load, cacheable=False) == 2
    assert await cache.get("k", load) == 1  # the committed one is still what is kept
    assert calls["n"] == 2


async def test_a_load_that_started_before_an_invalidation_is_not_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, Clock())
    release = asyncio.Event()
    values = iter([1, 2])

    async def slow_load() -> int:
        value = next(values)
        await release.wait()
        return value

    pending = asyncio.create_task(cache.get("k", slow_load))
    await asyncio.sleep(0)  # the load has begun (old value read)
    cache.invalidate()  # a change commits meanwhile
    release.set()
    assert await pending == 1  # the caller gets what it read ...
    assert await cache.get("k", slow_load) == 2  # ... but it was not kept


async def test_a_load_in_a_transaction_that_began_before_an_invalidation_is_not_kept() -> None:
    """A transaction reads the snapshot its first operation fixed: one that began before a change
    committed (and the cache was dropped) reads the old value even when it loads after the drop."""
    cache: TtlCache[str, int] = TtlCache(60.0, Clock())
    load, calls = loader([1, 2])
    began = invalidations()  # an older transaction begins (crm_platform.mongo.Tx.began)
    cache.invalidate()  # a change commits meanwhile and drops the cache
    assert await cache.get("k", load, since=began) == 1  # it gets its snapshot's value ...
    assert await cache.get("k", load, since=invalidations()) == 2  # ... not kept: a newer one loads
    assert await cache.get("k", load) == 2  # and that one is kept
    assert calls["n"] == 2


async def test_an_invalidation_of_another_cache_does_not_stop_this_one_keeping_its_loads() -> None:
    ours: TtlCache[str, int] = TtlCache(60.0, Clock())
    began = invalidations()
    TtlCache(60.0, Clock()).invalidate()
    load, calls = loader([1, 2])
    assert await ours.get("k", load, since=began) == 1
    assert await ours.get("k", load) == 1
    assert calls["n"] == 1
