"""A member id aiokafka gives up is left with a LeaveGroup, once; static members are not.

The coordinator here has only what the patched methods touch (its requests recorded); the real
broker's side is ``tests/reliability/test_consumer_leaves_abandoned_member.py``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import LeaveGroupRequest
from crm_platform.liveness import harden_aiokafka


def _coordinator(member: str = "m-1", generation: int = 3, instance: str | None = None) -> Any:
    coordinator: Any = object.__new__(GroupCoordinator)
    coordinator.group_id = "g"
    coordinator.member_id = member
    coordinator.generation = generation
    coordinator._group_instance_id = instance
    coordinator._rejoin_needed_fut = asyncio.get_running_loop().create_future()
    coordinator.left = []

    async def send(request: Any) -> Any:
        assert isinstance(request, LeaveGroupRequest)
        coordinator.left.append(request._member_id)
        return SimpleNamespace(error_code=0)

    coordinator._send_req = send
    return coordinator


async def _settle(coordinator: Any) -> None:
    """Wait for the LeaveGroup tasks the resets started."""
    if leaves := set(coordinator.__dict__.get("_crm_leaves", ())):
        await asyncio.wait(leaves)


async def test_a_reset_member_id_is_left_once_even_when_aiokafka_restores_it() -> None:
    harden_aiokafka()
    coordinator = _coordinator()
    coordinator.reset_generation()
    assert (coordinator.member_id, coordinator.generation) == ("", -1)
    assert coordinator._rejoin_needed_fut.done(), "aiokafka's reset still asks for a rejoin"
    # A sync that succeeded meanwhile puts the id back (aiokafka's _send_sync_group_request).
    coordinator.member_id, coordinator.generation = "m-1", 3
    coordinator.reset_generation()
    coordinator.reset_generation()  # no id any more: nothing to leave
    await _settle(coordinator)
    assert coordinator.left == ["m-1"]


async def test_a_static_member_is_not_left() -> None:
    harden_aiokafka()
    coordinator = _coordinator(instance="sales-0")
    coordinator.reset_generation()
    await coordinator._maybe_leave_group()
    await _settle(coordinator)
    assert coordinator.left == []


async def test_close_leaves_the_current_member_once() -> None:
    harden_aiokafka()
    with_generation = _coordinator(generation=3)
    await with_generation._maybe_leave_group()  # aiokafka's own LeaveGroup, then its reset
    await _settle(with_generation)
    assert with_generation.left == ["m-1"]
    without_generation = _coordinator(generation=-1)  # aiokafka's close would not leave it
    await without_generation._maybe_leave_group()
    await _settle(without_generation)
    assert without_generation.left == ["m-1"]
