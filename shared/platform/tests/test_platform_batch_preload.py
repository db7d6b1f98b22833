"""A batch's loads started side by side (``Batch.preload``, docs/performance.md, nineteenth
session, p99sales): a load started ahead is the one ``memo`` returns, nothing starts before the
transaction has begun (a command sent beside its first could find no transaction), a load
forgotten meanwhile is loaded again, and every load has finished before the attempt ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from crm_platform.batch import Batch, preload_of, with_preload


def _loader(calls: list[str], name: str, gate: asyncio.Event | None = None) -> Callable[[], Awaitable[str]]:
    async def load() -> str:
        calls.append(name)
        if gate is not None:
            await gate.wait()
        return name

    return load


async def test_a_preload_runs_beside_the_caller_and_is_what_memo_returns() -> None:
    batch = Batch([], begun=True)
    calls: list[str] = []
    gate = asyncio.Event()
    batch.preload("items", _loader(calls, "ahead", gate))
    await asyncio.sleep(0)  # the caller's own round trip: the preload is under way meanwhile
    assert calls == ["ahead"], "started before anything asked for it"
    gate.set()
    assert await batch.memo("items", _loader(calls, "asked")) == "ahead"
    assert await batch.memo("items", _loader(calls, "again")) == "ahead"
    assert calls == ["ahead"], "loaded once"
    await batch.settle()


async def test_nothing_is_preloaded_before_the_transaction_has_begun() -> None:
    batch = Batch([])
    calls: list[str] = []
    batch.preload("items", _loader(calls, "ahead"))
    await asyncio.sleep(0)
    assert calls == []
    assert await batch.memo("items", _loader(calls, "asked")) == "asked"
    assert calls == ["asked"]


async def test_a_preload_forgotten_while_under_way_is_loaded_again() -> None:
    batch = Batch([], begun=True)
    calls: list[str] = []
    gate = asyncio.Event()
    batch.preload("keys", _loader(calls, "before the change", gate))
    await asyncio.sleep(0)
    batch.forget("keys")  # a change the load may not see
    gate.set()
    assert await batch.memo("keys", _loader(calls, "after the change")) == "after the change"
    await batch.settle()


async def test_a_preload_under_way_ends_before_the_attempt_does() -> None:
    batch = Batch([], begun=True)
    calls: list[str] = []
    gate = asyncio.Event()
    batch.preload("items", _loader(calls, "slow", gate))
    await asyncio.sleep(0)
    settled = asyncio.create_task(batch.settle())
    await asyncio.sleep(0)
    assert not settled.done(), "waits for the load: nothing may reach the server after the commit"
    gate.set()
    await asyncio.wait_for(settled, 10)
    failed = Batch([], begun=True)
    failed.preload("items", _loader(calls, "never answered", asyncio.Event()))
    await asyncio.sleep(0)
    await asyncio.wait_for(failed.settle(failed=True), 10)  # cancelled, its error not raised


async def test_a_handler_names_its_preload() -> None:
    async def handler() -> None:
        return None

    def preload(tx: object) -> None:
        return None

    assert preload_of(handler) is None
    assert preload_of(with_preload(handler, preload)) is preload


def test_a_transactions_commands_overlap_except_in_load_balanced_mode() -> None:
    """PyMongo pins a load-balanced transaction to one connection, which carries one command at
    a time: there a begun transaction's commands are not sent side by side."""
    from types import SimpleNamespace

    from crm_platform.mongo import commands_may_overlap
    from pymongo.topology_description import TOPOLOGY_TYPE

    def session(kind: int) -> Any:
        described = SimpleNamespace(topology_description=SimpleNamespace(topology_type=kind))
        return SimpleNamespace(client=described)

    assert commands_may_overlap(session(TOPOLOGY_TYPE.ReplicaSetWithPrimary))
    assert commands_may_overlap(session(TOPOLOGY_TYPE.Sharded))
    assert not commands_may_overlap(session(TOPOLOGY_TYPE.LoadBalanced))
