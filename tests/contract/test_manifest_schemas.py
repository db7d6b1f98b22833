"""Every rendered manifest is valid against its schema: Kubernetes' own and the CRDs'.

Each kustomization is rendered with ``kubectl kustomize`` (as ``kubectl apply -k`` would) and
every object is validated offline:

- built-in kinds with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas it ships, for
  ``KUBERNETES_VERSION``, strict: an unknown field such as a misspelt ``replica`` fails);
- custom resources (Strimzi ``KafkaTopic``/``KafkaUser``, KEDA ``ScaledObject``/
  ``TriggerAuthentication``, Prometheus Operator ``PodMonitor``/``PrometheusRule``, External
  Secrets ``ExternalSecret``) against the JSON Schemas of their CRDs, vendored in
  ``fixtures/crd-schemas`` (see its README); nothing is downloaded.

A kind with no schema at all fails (vendor its CRD's schema), and a test breaks manifests on
purpose to prove that each validator refuses them.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD_SCHEMAS = Path(__file__).parent / "fixtures" / "crd-schemas"
# The oldest Kubernetes the manifests must run on (PodDisruptionBudget's
# unhealthyPodEvictionPolicy is GA since 1.31).
KUBERNETES_VERSION = "1.31.0"

Doc = dict[str, Any]


def kustomizations() -> list[Path]:
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text(encoding="utf-8")).get("kind") != "Component":
            found.append(path.parent)
    return found


@cache
def render(directory: Path) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: `kubectl kustomize` renders the overlays (install kubectl)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d is not None)


@cache
def crd_schema(group: str, version: str, kind: str) -> Doc | None:
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not path.is_file():
        return None
    schema: Doc = json.loads(path.read_text(encoding="utf-8"))
    return schema


def is_custom(api_version: str) -> bool:
    """A CRD's group has a dot; the built-in groups have none or end in .k8s.io."""
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def crd_problems(doc: Doc, where: str) -> list[str]:
    group, _, version = doc["apiVersion"].rpartition("/")
    schema = crd_schema(group, version, doc["kind"])
    if schema is None:
        return [f"{where}: no schema vendored for {doc['apiVersion']} {doc['kind']} (fixtures/crd-schemas)"]
    errors = jsonschema.Draft7Validator(schema).iter_errors(doc)
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def problems(doc: Doc) -> list[str]:
    """What is wrong with one object (empty: valid)."""
    where = f"{doc['kind']} {doc.get('metadata', {}).get('name')}"
    if is_custom(doc["apiVersion"]):
        return crd_problems(doc, where)
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {'/'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: {error}"]
    return []


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_rendered_manifests_are_valid(directory: Path) -> None:
    found = [problem for doc in render(directory) for problem in problems(doc)]
    assert found == [], "\n".join(found)


def test_every_custom_resource_kind_has_a_vendored_schema() -> None:
    kinds = {
        (d["apiVersion"], d["kind"])
        for directory in kustomizations()
        for d in render(directory)
        if is_custom(d["apiVersion"])
    }
    expected = {
        ("kafka.strimzi.io/v1", "KafkaTopic"),
        ("kafka.strimzi.io/v1", "KafkaUser"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("external-secrets.io/v1", "ExternalSecret"),
    }
    assert kinds == expected
    for api_version, kind in kinds:
        group, _, version = api_version.rpartition("/")
        assert crd_schema(group, version, kind) is not None, (api_version, kind)


def _first(kind: str) -> Doc:
    for doc in render(DEPLOY / "k8s" / "overlays" / "production"):
        if doc["kind"] == kind:
            return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} in the production overlay")


def test_broken_manifests_fail_validation() -> None:
    """Each validator refuses what Kubernetes or the operator would refuse."""
    deployment = _first("Deployment")
    assert problems(deployment) == []
    deployment["spec"]["replica"] = 2  # misspelt: strict validation refuses unknown fields
    assert problems(deployment)
    deployment = _first("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    assert problems(deployment)

    scaled = _first("ScaledObject")
    assert problems(scaled) == []
    scaled["spec"]["maxReplicaCount"] = "six"
    assert problems(scaled)

    topic = render(DEPLOY / "k8s" / "base" / "kafka-topics")[0]
    broken_topic = copy.deepcopy(topic)
    broken_topic["spec"]["partitions"] = 0  # Strimzi: at least one partition
    assert problems(topic) == []
    assert problems(broken_topic)

    secret = _first("ExternalSecret")
    del secret["spec"]["data"][0]["remoteRef"]["key"]
    assert problems(secret)

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert problems(unknown) == [
        "Widget w: no schema vendored for example.com/v1 Widget (fixtures/crd-schemas)"
    ]
