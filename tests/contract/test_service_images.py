"""Each service's image is built from its own inputs: its lock and a context of shared/ and itself.

``scripts/service_image.py`` exports ``services/<svc>/requirements.lock`` from ``uv.lock`` (the
service's closure only) and builds the context the service's Dockerfile is built from. These
tests keep the locks fresh and prove the isolation: a dependency change in one service
changes no byte of another service's build context, hence none of its image layers.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import service_image  # noqa: E402

SERVICES = service_image.services()


def _names(service: str) -> set[str]:
    text = (ROOT / "services" / service / service_image.LOCK).read_text(encoding="utf-8")
    return {line.split("==")[0] for line in text.splitlines() if "==" in line and not line.startswith(" ")}


def test_every_service_has_a_fresh_lock_of_its_own_closure() -> None:
    stale = service_image.check_locks(write=False)
    assert not stale, f"stale service locks: {stale}; run `python scripts/service_image.py locks`"
    # What only one service needs is in its lock only.
    assert [s for s in SERVICES if "argon2-cffi" in _names(s)] == ["gateway"]
    assert [s for s in SERVICES if "faust-streaming" in _names(s)] == ["analytics"]
    for service in SERVICES:
        assert not _names(service) & {"leads", "sales", "service-desk", "analytics", "gateway", "console"}
        assert {"aiokafka", "pymongo", "opentelemetry-sdk"} <= _names(service), "the platform's closure"


@pytest.mark.parametrize("service", SERVICES)
def test_an_image_context_holds_only_shared_and_its_service(service: str, tmp_path: Path) -> None:
    out = tmp_path / service
    service_image.build_context(ROOT, service, out)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    allowed = ("shared/contracts/", "shared/platform/", f"services/{service}/")
    assert files, "an empty context"
    assert all(f.startswith(allowed) for f in files), sorted(f for f in files if not f.startswith(allowed))
    assert not [f for f in files if "/tests/" in f or "__pycache__" in f]
    assert {f"services/{service}/Dockerfile", f"services/{service}/{service_image.LOCK}"} <= files
    assert "uv.lock" not in files, "the workspace lock (every service's dependencies) stays out"


def _copy_workspace(dest: Path) -> None:
    for service in SERVICES:
        for rel in service_image.context_files(ROOT, service):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    shutil.copy2(ROOT / "uv.lock", dest / "uv.lock")


def test_a_dependency_change_in_one_service_changes_no_other_service_context(tmp_path: Path) -> None:
    _copy_workspace(tmp_path)
    before = {s: service_image.digest(tmp_path, s) for s in SERVICES}
    # leads takes a new dependency: its pyproject, the workspace lock and leads' own lock change.
    leads = tmp_path / "services" / "leads"
    pyproject = leads / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = [", 'dependencies = [\n    "rapidfuzz>=3",')
    )
    with (leads / service_image.LOCK).open("a") as lock:
        lock.write("rapidfuzz==3.14.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with (tmp_path / "uv.lock").open("a") as lock:
        lock.write('\n[[package]]\nname = "rapidfuzz"\nversion = "3.14.1"\n')
    after = {s: service_image.digest(tmp_path, s) for s in SERVICES}
    assert after["leads"] != before["leads"]
    assert {s: after[s] for s in SERVICES if s != "leads"} == {s: before[s] for s in SERVICES if s != "leads"}
    # The shared code is in every image: a change there reaches all of them.
    (tmp_path / "shared" / "platform" / "pyproject.toml").write_text("# changed\n", encoding="utf-8")
    shared = {s: service_image.digest(tmp_path, s) for s in SERVICES}
    assert all(shared[s] != after[s] for s in SERVICES)
