"""Every kustomization renders with kustomize itself (``kubectl kustomize``), not only parses.

The YAML-level checks in test_deploy_manifests.py read the files; this renders each
overlay, base and component the way ``kubectl apply -k`` would, so a patch that no longer
matches its target, a missing resource or a bad transformer fails here. kubectl comes from
the OS (Debian: the ``kubernetes-client`` package); missing, this FAILS with that
instruction rather than skipping.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def kustomizations() -> list[Path]:
    """Every kustomization that renders on its own (components render inside an overlay)."""
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text(encoding="utf-8")).get("kind") != "Component":
            found.append(path.parent)
    return found


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: `kubectl kustomize` renders the overlays (install kubectl)")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    command = [kubectl(), "kustomize", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_renders(directory: Path) -> None:
    docs = render(directory)
    assert docs, f"{directory} renders nothing"
    names = set()
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        name = doc["metadata"]["name"]
        key = (doc["kind"], doc["metadata"].get("namespace"), name)
        assert key not in names, f"{directory}: {key} rendered twice"
        names.add(key)


def test_the_production_overlay_renders_every_service_in_its_namespace() -> None:
    docs = render(DEPLOY / "k8s" / "overlays" / "production")
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    expected = {"leads", "sales", "service-desk", "analytics", "analytics-worker", "gateway", "console"}
    assert deployments == expected
    namespaced = {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"}
    namespaced |= {"KafkaUser", "ScaledObject", "TriggerAuthentication"}
    for doc in docs:
        if doc["kind"] in namespaced:
            assert doc["metadata"].get("namespace") == "crm", (doc["kind"], doc["metadata"]["name"])
