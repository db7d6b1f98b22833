"""Every kustomization renders with kustomize itself (``kubectl kustomize``), not only parses.

The YAML-level checks in test_deploy_manifests.py read the files; this renders each
overlay, base and component the way ``kubectl apply -k`` would, so a patch that no longer
matches its target, a missing resource or a bad transformer fails here. kubectl comes from
the OS (Debian: the ``kubernetes-client`` package); missing, this FAILS with that
instruction rather than skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

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


SECRET_NAMES = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE|MONGODB_URI|_KEY$")
PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def production_images(docs: list[dict[str, Any]]) -> dict[str, str]:
    images = {}
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                images[f"{doc['metadata']['name']}/{c['name']}"] = c["image"]
    return images


def unpinned(images: dict[str, str]) -> list[str]:
    return sorted(f"{where}: {image}" for where, image in images.items() if not PINNED.match(image))


def test_production_runs_only_images_pinned_by_digest() -> None:
    """A tag can be moved to another image; a digest cannot. Production refuses tags alone."""
    images = production_images(render(DEPLOY / "k8s" / "overlays" / "production"))
    assert images
    assert unpinned(images) == []
    # and the check refuses what it should: a tag, latest, a short digest
    bad = {"a": "registry.example.com/crm/a:1.2.3", "b": "r/b:latest", "c": "r/c@sha256:abc"}
    assert len(unpinned(bad)) == 3


def test_production_holds_no_literal_secret() -> None:
    docs = render(DEPLOY / "k8s" / "overlays" / "production")
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets come from ExternalSecrets"
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                if SECRET_NAMES.search(env["name"]) and not env["name"].endswith("_FILE"):
                    assert "value" not in env, f"{doc['metadata']['name']}: {env['name']} is a literal"


def test_the_tracing_component_points_every_deployment_at_the_collector(tmp_path: Path) -> None:
    """deploy/k8s/components/tracing over production: every CRM container gets the OTLP endpoint
    and the pods may reach the collector (NetworkPolicies would drop the spans otherwise)."""
    production = DEPLOY / "k8s" / "overlays" / "production"
    component = DEPLOY / "k8s" / "components" / "tracing"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(production, tmp_path)],
                "components": [os.path.relpath(component, tmp_path)],
            }
        ),
        encoding="utf-8",
    )
    docs = render(tmp_path)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 7
    for deployment in deployments:
        (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "app"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318"), deployment["metadata"]["name"]
    (policy,) = [
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "crm-otlp-egress"
    ]
    assert policy["metadata"]["namespace"] == "crm"
    assert policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 4318}]
