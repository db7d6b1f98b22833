"""A department releases alone: its own test entry point, owners, and nothing of the others."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))


def codeowners() -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    for line in (ROOT / ".github" / "CODEOWNERS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, *owners = line.split()
            rules[pattern] = owners
    return rules


def test_every_department_and_the_shared_code_have_owners() -> None:
    rules = codeowners()
    assert rules["*"], "a default owner"
    for service in SERVICES:
        assert rules.get(f"/services/{service}/"), f"no owner for services/{service}"
    assert rules["/shared/platform/"] == ["@crm/platform"]
    assert "@crm/platform" in rules["/shared/contracts/"]
    assert len(rules["/shared/contracts/"]) > 1, "contracts need more than the platform team's review"


def test_make_test_service_refuses_an_unknown_service() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "test_service.sh"), "no-such-service"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "usage: make test-service S=<" in done.stderr
    for service in SERVICES:
        assert service in done.stderr


def test_the_isolated_suite_installs_only_shared_and_the_service() -> None:
    script = (ROOT / "scripts" / "test_service_isolated.sh").read_text()
    assert '--package "$svc"' in script, "the service's own locked closure"
    assert "isolation broken" in script, "fails when another department is installed beside it"
