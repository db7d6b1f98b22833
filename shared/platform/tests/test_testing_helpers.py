"""The test helpers' own rules: polling deadlines stretch with machine load, never shrink."""

from __future__ import annotations

import os

import pytest
from crm_platform.testing import eventually, timeout_scale


def test_a_configured_scale_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TEST_TIMEOUT_SCALE", "3")
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0, 0.0, 0.0))
    assert timeout_scale() == 3.0


def test_a_configured_scale_never_shortens_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TEST_TIMEOUT_SCALE", "0.1")
    assert timeout_scale() == 1.0


@pytest.mark.parametrize(
    ("load", "cores", "scale"),
    [(0.5, 2, 1.0), (4.0, 2, 1.0), (12.0, 2, 3.0), (60.0, 2, 5.0)],
)
def test_the_scale_follows_the_run_queue_per_core(
    monkeypatch: pytest.MonkeyPatch, load: float, cores: int, scale: float
) -> None:
    monkeypatch.delenv("CRM_TEST_TIMEOUT_SCALE", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert timeout_scale() == scale


async def test_eventually_reports_the_stretched_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TEST_TIMEOUT_SCALE", "2")

    async def never() -> None:
        return None

    with pytest.raises(AssertionError, match=r"timed out after 1s waiting for nothing"):
        await eventually(never, timeout=0.3, interval=0.01, what="nothing")  # 0.6 s
