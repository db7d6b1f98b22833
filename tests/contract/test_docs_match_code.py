"""The README is part of the product: its topic table and commands must match the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from crm_contracts.handoffs import HANDOFFS
from crm_contracts.registry import ALL_EVENTS
from crm_contracts.topics import TOPICS

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_lists_every_topic_with_its_partitions_and_events() -> None:
    rows = {
        line.split("|")[1].strip(" `"): line for line in README.splitlines() if line.startswith("| `crm.")
    }
    assert set(rows) == {t.name for t in TOPICS}
    for topic in TOPICS:
        assert f"| {topic.partitions} |" in rows[topic.name], topic.name
    for event in ALL_EVENTS:
        assert f"`{event.event_type}` v{event.version}" in rows[event.topic], event.event_type


def test_readme_names_every_handoff_and_shows_the_two_commands_first() -> None:
    for handoff in HANDOFFS:
        assert handoff.name in README
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make run" in first_screen
    assert "make test" in first_screen
