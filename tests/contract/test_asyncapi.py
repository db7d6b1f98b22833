"""The AsyncAPI 3 document: generated from the topic table and the schemas, current, valid."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from crm_contracts.access import CONSUMES
from crm_contracts.registry import ALL_EVENTS
from crm_contracts.topics import TOPICS

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_asyncapi", ROOT / "scripts" / "gen_asyncapi.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_asyncapi", module)
    spec.loader.exec_module(module)
    return module


def checked_in() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi" / "crm.asyncapi.yaml").read_text())
    return doc


def test_the_checked_in_document_is_current_and_valid_asyncapi_3() -> None:
    assert generator().problems() == []
    assert checked_in()["asyncapi"] == "3.0.0"


def test_an_invalid_document_is_refused() -> None:
    doc = copy.deepcopy(checked_in())
    doc["channels"]["crm-sales-deal-won"]["bindings"]["kafka"]["partitions"] = "six"
    doc["operations"]["bogus"] = {"action": "publish", "channel": {"$ref": "#/channels/crm-sales-deal-won"}}
    errors = generator().validation_errors(doc)
    assert any("/channels/crm-sales-deal-won" in e for e in errors), errors
    assert any("/operations/bogus" in e for e in errors), errors


def test_every_topic_is_a_channel_and_every_event_version_a_message_of_its_topic() -> None:
    doc = checked_in()
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert set(channels) == {t.name for t in TOPICS}
    for topic in TOPICS:
        assert channels[topic.name]["bindings"]["kafka"]["partitions"] == topic.partitions
    messages = doc["components"]["messages"]
    for event in ALL_EVENTS:
        title = f"{event.event_type} v{event.version}"
        (message_id,) = [m for m, v in messages.items() if v["title"] == title]
        assert message_id in channels[event.topic]["messages"], event.event_type
        payload = messages[message_id]["payload"]["schema"]["allOf"][1]["properties"]["payload"]["$ref"]
        assert (ROOT / "docs" / "asyncapi" / payload).resolve().is_file(), payload


def test_each_department_receives_what_it_consumes() -> None:
    operations = checked_in()["operations"]
    for service, topics in CONSUMES.items():
        for topic in topics:
            assert f"{service}-receives-{topic.replace('.', '-')}" in operations
