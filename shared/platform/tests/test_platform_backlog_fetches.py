"""``crm_platform.kafka.spread_backlog_fetches``: a fetch asks for every caught-up partition and at
most one that may hold a backlog (the embedded broker answers with all a partition holds, so a
consumer starting on a backlog got all of it in one response: docs/performance.md, thirteenth
session, drain)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka
import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher, FetchRequest
from crm_platform import kafka
from crm_platform.aiokafka_compat import UnsupportedAiokafka
from crm_platform.kafka import CAUGHT_UP_RECORDS, one_backlog

LIMIT = 1024 * 1024


@dataclass
class _State:
    highwater: int | None


def _states(ends: Mapping[tuple[str, int], int | None]) -> Any:
    return lambda tp: _State(ends[(tp.topic, tp.partition)])


def test_caught_up_partitions_all_and_one_that_may_hold_a_backlog() -> None:
    asked = [
        ("a", [(0, 100, LIMIT), (1, 0, LIMIT), (2, 50, LIMIT)]),
        ("b", [(0, 0, LIMIT), (1, 7, LIMIT)]),
    ]
    behind = 50 + CAUGHT_UP_RECORDS + 1
    ends = {("a", 0): 100, ("a", 1): None, ("a", 2): behind, ("b", 0): 100_000, ("b", 1): 7}
    # a-0 and b-1 are at their end; a-1 (never fetched) is the one backlog; a-2 and b-0 wait.
    kept = [("a", [(0, 100, LIMIT), (1, 0, LIMIT)]), ("b", [(1, 7, LIMIT)])]
    assert one_backlog(asked, _states(ends)) == kept


def test_a_live_consumers_fetch_is_unchanged() -> None:
    asked = [("a", [(p, 10, LIMIT) for p in range(6)])]
    ends = {("a", p): 10 + CAUGHT_UP_RECORDS for p in range(6)}
    assert one_backlog(asked, _states(ends)) == asked


def test_a_consumer_on_a_backlog_asks_for_one_partition_at_a_time() -> None:
    asked = [("a", [(p, 0, LIMIT) for p in range(6)])]
    assert one_backlog(asked, _states({("a", p): None for p in range(6)})) == [("a", [(0, 0, LIMIT)])]


class _Assignment:
    def state_value(self, tp: TopicPartition) -> _State:
        return _State(None)


def test_aiokafkas_fetch_requests_are_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    request = FetchRequest(500, 1, LIMIT, 0, [("a", [(0, 0, LIMIT), (1, 0, LIMIT)])])
    actions: Any = ([(1, request)], {}, 0.1, False, [])
    monkeypatch.setattr(Fetcher, "_crm_spread", False, raising=False)
    monkeypatch.setattr(Fetcher, "_get_actions_per_node", lambda self, assignment: actions)
    kafka.spread_backlog_fetches()
    assert Fetcher._get_actions_per_node(None, _Assignment()) is actions
    assert request.topics == [("a", [(0, 0, LIMIT)])]


def test_spread_backlog_fetches_refuses_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Fetcher, "_crm_spread", False, raising=False)
    actions = Fetcher._get_actions_per_node
    monkeypatch.setattr(Fetcher, "_get_actions_per_node", actions)
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    with pytest.raises(UnsupportedAiokafka, match="spread_backlog_fetches"):
        kafka.spread_backlog_fetches()
    assert Fetcher._get_actions_per_node is actions
