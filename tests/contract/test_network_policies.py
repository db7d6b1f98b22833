"""Who may talk to whom, in every overlay, as Kubernetes would enforce it.

Renders each overlay with ``kubectl kustomize`` (as ``kubectl apply -k`` would) and evaluates
its NetworkPolicies the way the API defines them: a pod is isolated by every policy whose
``podSelector`` selects it, and may then send or receive only what the union of those
policies' rules allows. For each Deployment it derives whom the pod may reach and who may reach
it (peers resolved to a role: a CRM deployable, ``dns``, ``kafka``, ``mongodb``,
``prometheus``, ``ingress``) with the ports, and compares that with one table:

- a default deny selects every CRM pod (nothing is open unless a policy says so);
- the gateway: reached by the ingress controller (production), the console, the departments
  (revocation list) and Prometheus; reaches DNS, its database, the departments and the console;
- the console: reached by the gateway and Prometheus; reaches DNS and the gateway only;
- each department: reached by the gateway and Prometheus; reaches DNS, its database, the brokers
  and the gateway (revocation list) only; the analytics worker: Prometheus in, no gateway out.

A peer that is not one of these (an ``ipBlock``, an empty selector, a rule without ports)
fails the test, so a policy cannot quietly open more.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"

Doc = dict[str, Any]
Reach = dict[str, set[int]]

PORTS = {
    "leads": 8001,
    "sales": 8002,
    "service-desk": 8003,
    "analytics": 8004,
    "gateway": 8080,
    "console": 8005,
}
DEPARTMENTS = ("leads", "sales", "service-desk", "analytics")
WORKER = "analytics-worker"
WORKER_PORT = 6066
# Namespaces that stand for one role when a peer names them.
NAMESPACE_ROLES = {
    "kube-system": "dns",
    "monitoring": "prometheus",
    "ingress-nginx": "ingress",
    "kafka": "kafka",
    "mongodb": "mongodb",
}
KAFKA_PORT = {"production": 9093, "local": 9092}


def render(overlay: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: `kubectl kustomize` renders the overlays (install kubectl)")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels selectors are evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def role(peer: Doc) -> str:
    """The one role a peer stands for; anything broader fails."""
    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"unexpected peer {peer}"
    pods = (peer.get("podSelector") or {}).get("matchLabels", {})
    namespace = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
    if "namespaceSelector" in peer:
        name = namespace.get("kubernetes.io/metadata.name")
        assert name in NAMESPACE_ROLES, f"a peer in an unknown namespace: {peer}"
        assert pods or name == "mongodb", f"every pod of namespace {name}: {peer}"
        return NAMESPACE_ROLES[name]
    name = pods.get("app.kubernetes.io/name")
    assert name, f"a peer selecting every pod of the namespace: {peer}"
    return str(name)


def reach(policies: list[Doc], direction: str) -> Reach:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    allowed: Reach = {}
    for policy in policies:
        for rule in policy["spec"].get(key) or []:
            ports = {int(p["port"]) for p in rule.get("ports") or []}
            assert ports, f"{policy['metadata']['name']}: a rule without ports opens every port"
            peers = rule.get(peers_key) or []
            assert peers, f"{policy['metadata']['name']}: a rule without peers opens to everyone"
            for peer in peers:
                allowed.setdefault(role(peer), set()).update(ports)
    return allowed


def expected(name: str, overlay: str) -> tuple[Reach, Reach]:
    """(ingress, egress) of one Deployment."""
    kafka, dns, db = {"kafka": {KAFKA_PORT[overlay]}}, {"dns": {53}}, {"mongodb": {27017}}
    if name == "gateway":
        sources = {"console", *DEPARTMENTS, "prometheus"}
        if overlay == "production":
            sources.add("ingress")  # the ingress controller; locally, kubectl port-forward
        upstreams = {s: {PORTS[s]} for s in (*DEPARTMENTS, "console")}
        return {s: {PORTS["gateway"]} for s in sources}, {**dns, **db, **upstreams}
    if name == "console":
        return {"gateway": {PORTS["console"]}, "prometheus": {PORTS["console"]}}, {**dns, "gateway": {8080}}
    if name == WORKER:
        return {"prometheus": {WORKER_PORT}}, {**dns, **db, **kafka}
    port = PORTS[name]
    return {"gateway": {port}, "prometheus": {port}}, {**dns, **db, **kafka, "gateway": {8080}}


def crm_deployments(docs: list[Doc]) -> list[Doc]:
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {*PORTS, WORKER}
    return deployments


@pytest.mark.parametrize("overlay", ["production", "local"])
def test_a_default_deny_isolates_every_crm_pod(overlay: str) -> None:
    docs = render(overlay)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    denies = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")]
    for deployment in crm_deployments(docs):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        deny = [p for p in denies if selects(p["spec"]["podSelector"], labels)]
        assert deny, f"{overlay}: no default deny selects {deployment['metadata']['name']}"
        assert {"Ingress", "Egress"} <= {t for p in deny for t in p["spec"]["policyTypes"]}


@pytest.mark.parametrize("overlay", ["production", "local"])
def test_each_deployment_reaches_and_is_reached_by_exactly_what_it_needs(overlay: str) -> None:
    docs = render(overlay)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for deployment in crm_deployments(docs):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        allowing = [p for p in own if p["spec"].get("ingress") or p["spec"].get("egress")]
        assert allowing, f"{overlay}: no policy opens anything for {name}"
        for policy in own:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, policy["metadata"]["name"]
        ingress, egress = expected(name, overlay)
        assert reach(own, "Ingress") == ingress, f"{overlay}: who may reach {name}"
        assert reach(own, "Egress") == egress, f"{overlay}: what {name} may reach"


def test_the_evaluation_catches_a_policy_that_opens_more() -> None:
    """The checks above can fail: an extra egress rule, an ipBlock, a rule without ports."""
    policy: Doc = {
        "metadata": {"name": "x"},
        "spec": {"egress": [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sales"}}}]}]},
    }
    with pytest.raises(AssertionError, match="without ports"):
        reach([policy], "Egress")
    policy["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]
    with pytest.raises(AssertionError, match="unexpected peer"):
        reach([policy], "Egress")
    policy["spec"]["egress"] = [{"to": [{"podSelector": {}}], "ports": [{"port": 27017}]}]
    with pytest.raises(AssertionError, match="every pod"):
        reach([policy], "Egress")
    sales_to_leads = {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "leads"}}}]}
    policy["spec"]["egress"] = [{**sales_to_leads, "ports": [{"port": 8001}]}]
    assert reach([policy], "Egress") != expected("sales", "production")[1]
