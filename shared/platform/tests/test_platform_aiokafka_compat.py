"""The private-method aiokafka patches refuse, at startup, a version they were not written for."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiokafka
import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from crm_platform import kafka
from crm_platform.aiokafka_compat import PATCHED_FOR, UnsupportedAiokafka, require_patchable
from crm_platform.liveness import harden_aiokafka

PLATFORM_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_an_unknown_aiokafka_version_is_refused_with_both_versions_named() -> None:
    with pytest.raises(UnsupportedAiokafka) as refused:
        require_patchable("some patch", version="0.15.0")
    message = str(refused.value)
    assert "some patch" in message
    assert "0.15.0" in message
    assert all(v in message for v in PATCHED_FOR)


def test_the_installed_aiokafka_is_one_the_patches_were_written_for() -> None:
    require_patchable("some patch")  # raises otherwise
    assert aiokafka.__version__ in PATCHED_FOR


def test_the_platform_pins_aiokafka_to_exactly_the_patched_versions() -> None:
    deps = tomllib.loads(PLATFORM_PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d.replace(" ", "") for d in deps if d.replace(" ", "").startswith("aiokafka")]
    assert pins, "crm-platform must declare aiokafka"
    allowed = {f"aiokafka=={v}" for v in PATCHED_FOR}
    assert set(pins) <= allowed, f"{pins}: an open range would install a version the patches refuse"


def test_harden_aiokafka_refuses_another_version_and_leaves_fetcher_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Fetcher, "_crm_hardened", False, raising=False)
    monkeypatch.setattr(GroupCoordinator, "_crm_leaves_abandoned", False, raising=False)
    close = Fetcher.close
    reset = GroupCoordinator.reset_generation
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    with pytest.raises(UnsupportedAiokafka, match="harden_aiokafka"):
        harden_aiokafka()
    assert Fetcher.close is close
    assert GroupCoordinator.reset_generation is reset


def test_empty_fetch_pacing_refuses_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Fetcher, "_crm_paced", False, raising=False)
    monkeypatch.setattr(kafka, "_empty_fetch_pause", kafka._empty_fetch_pause)
    proc = Fetcher._proc_fetch_request
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    with pytest.raises(UnsupportedAiokafka, match="pace_empty_fetches"):
        kafka.pace_empty_fetches(100)
    assert Fetcher._proc_fetch_request is proc
