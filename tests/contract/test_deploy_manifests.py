"""The deployment artefacts agree with the code: Dockerfiles, Kubernetes manifests, monitoring.

Only reads files (no Docker, no cluster, no network). What it pins down:

- every YAML file under ``deploy/`` parses; every kustomization's references exist;
- every service has a self-contained base whose Deployments have both probes,
  requests and limits, a non-root numeric user, a read-only root filesystem, ...;
- each service points at its own database, with secrets only referenced;
- the checked-in Strimzi ``KafkaTopic`` manifests match the topic table;
- the production overlay: HPAs, network policies, pinned images;
- every metric the alerts and the dashboard use is one the services export, so
  renaming a metric breaks this test;
- every Dockerfile builds from ``uv.lock`` and runs as a numeric non-root user.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from crm_contracts.access import CONSUMES, produces
from crm_contracts.access import reads as readable
from crm_contracts.handoffs import HANDOFFS
from crm_contracts.topics import (
    ERASURE_CONFIRMATIONS,
    GATEWAY_ERASURE_REQUESTS,
    GATEWAY_PERMISSIONS,
    HANDOFF_RECEIPTS,
    TOPICS,
    dead_letter_topic,
)

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
MONITORING = DEPLOY / "monitoring"
GENERATOR = ROOT / "scripts" / "gen_k8s_topics.py"

RUN_AS = 65532  # distroless "nonroot"; the Dockerfiles' USER and the pods' runAsUser
IMAGE_REPO = "registry.example.com/crm"
TOPICS_BASE = "kafka-topics"
STRIMZI_API = "kafka.strimzi.io/v1"
KAFKA_CA_SECRET = "crm-kafka-cluster-ca-cert"

Doc = dict[str, Any]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    port: int
    database: str | None  # None: no database at all (the console)
    kafka: bool = True


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec("leads", "leads", 8001, "leads"),
        ServiceSpec("sales", "sales", 8002, "sales"),
        ServiceSpec("service-desk", "service_desk", 8003, "service_desk"),
        ServiceSpec("analytics", "analytics", 8004, "analytics"),
        ServiceSpec("gateway", "gateway", 8080, "gateway"),
        ServiceSpec("console", "console", 8005, None, kafka=False),
    )
}
# The deployables with a database of their own (everything but the console).
DATABASE_SERVICES = [s for s, spec in SERVICES.items() if spec.database]
# Who owns each Deployment's replica count in production: a CPU HPA for the gateway; KEDA
# (lag + CPU) for every department that consumes events from its API Deployment. The
# analytics worker is not scaled at all (exactly one replica per app id).
HPA_SERVICES = frozenset({"gateway"})
KEDA_SERVICES = frozenset({"leads", "sales", "service-desk"})
KEDA_API = "keda.sh/v1alpha1"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
EXTERNAL_SECRETS_API = "external-secrets.io/v1"
# Secrets of production that no ExternalSecret of a department makes: Strimzi's User Operator
# writes each department's Kafka password (crm-<department>); the cluster CA, which every
# department mounts, comes from the platform overlay's ExternalSecret (PLATFORM_SECRETS).
STRIMZI_SECRETS = {f"crm-{s}" for s in ("leads", "sales", "service-desk", "analytics", "gateway")}
# ... and so does the install-wide key of the keyed hash of personal data (crm_platform.pseudonym).
PLATFORM_SECRETS = {KAFKA_CA_SECRET, "crm-pseudonym-key"}
# Deployables whose Kubernetes base is not written yet: named here so the gap stays visible.
NO_BASE_YET: dict[str, str] = {}
WORKER = "analytics-worker"
GATEWAY_URLS = {
    "CRM_LEADS_URL": "leads",
    "CRM_SALES_URL": "sales",
    "CRM_SERVICE_DESK_URL": "service-desk",
    "CRM_ANALYTICS_URL": "analytics",
}
CONSOLE_URL = {"CRM_CONSOLE_URL": "console"}

# The metric names the services export: the ops contract (see crm_platform.metrics).
CRM_METRICS = frozenset(
    {
        "crm_events_produced_total",
        "crm_events_consumed_total",
        "crm_event_processing_seconds",
        "crm_outbox_backlog",
        "crm_broker_reachable",
        "crm_dead_lettered_total",
        "crm_consumer_lag",
        "crm_consumer_stalled",
        "crm_consumer_rejoins_total",
        "crm_handoff_transport_latency_seconds",
        "crm_handoff_resent_total",
        "crm_handoffs_unreceipted",
        "crm_handoff_unreceipted_oldest_seconds",
        "crm_handoffs_resend_exhausted",
        "crm_http_requests_total",
        "crm_http_request_seconds",
        "crm_analytics_handoff_latency_seconds",
        "crm_analytics_business_latency_window_seconds",
        "crm_analytics_funnel",
        "crm_analytics_reconciliation_difference",
        "crm_analytics_reconciliation_timestamp_seconds",
        "crm_analytics_snapshot_age_seconds",
    }
)
HISTOGRAMS = frozenset(
    {
        "crm_event_processing_seconds",
        "crm_handoff_transport_latency_seconds",
        "crm_http_request_seconds",
    }
)
# Series of other exporters the alerts rely on: Prometheus itself and kube-state-metrics.
EXTERNAL_METRICS = frozenset(
    {
        "up",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
    }
)
ALLOWED_SERIES = (
    CRM_METRICS
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
    | EXTERNAL_METRICS
)


# --- helpers -------------------------------------------------------------------------


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


# YAML under deploy/ that is not a Kubernetes object: the SLO table the rules are
# generated from and promtool's unit tests (tests/contract/test_monitoring_rules.py).
NOT_KUBERNETES = (MONITORING / "slos.yaml", MONITORING / "tests")


def yaml_files() -> list[Path]:
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in (".yaml", ".yml")
        and p.is_file()
        and not any(p == n or n in p.parents for n in NOT_KUBERNETES)
    )


def kustomization(directory: Path) -> Doc:
    docs = load_docs(directory / "kustomization.yaml")
    assert len(docs) == 1, directory
    return docs[0]


@cache
def base_resources(service: str) -> tuple[Doc, ...]:
    directory = BASE / service
    docs: list[Doc] = []
    for entry in kustomization(directory).get("resources", []):
        docs.extend(load_docs(directory / entry))
    return tuple(docs)


def of_kind(docs: tuple[Doc, ...] | list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def all_base_deployments() -> list[tuple[str, Doc]]:
    return [(svc, d) for svc in SERVICES for d in of_kind(base_resources(svc), "Deployment")]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def env_of(deployment: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def production_resources(service: str) -> list[Doc]:
    directory = PRODUCTION / service
    docs: list[Doc] = []
    for entry in kustomization(directory).get("resources", []):
        path = directory / entry
        if path.is_file():
            docs.extend(load_docs(path))
    return docs


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_k8s_topics", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_k8s_topics", module)
    spec.loader.exec_module(module)
    return module


# --- PromQL: which series an expression reads ------------------------------------------

_STRINGS_OR_COMMENTS = re.compile(r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)|#[^\n]*")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords excluded)."""
    text = _STRINGS_OR_COMMENTS.sub(lambda m: '""' if m.group(1) else "", expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = """
    histogram_quantile(0.99, sum by (handoff, le) (rate(crm_x_seconds_bucket{handoff="a"}[5m]))) > 1e3
    and on (service) # a comment naming not_a_metric
    max by (service) (crm_y_total offset 10m) unless crm_z{label=~"up|down"}
    """
    assert metric_names(expr) == {"crm_x_seconds_bucket", "crm_y_total", "crm_z"}


def prometheus_rules() -> list[Doc]:
    (doc,) = load_docs(MONITORING / "prometheusrule.yaml")
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> Doc:
    data: Doc = json.loads((MONITORING / "crm-handoffs.json").read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> Iterator[Doc]:
    def walk(panels: list[Doc]) -> Iterator[Doc]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard()["panels"])


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard().get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = str(query["query"] if isinstance(query, dict) else query)
        # Grafana's label_values(<selector>, <label>): the selector is PromQL.
        match = _LABEL_VALUES.match(text)
        exprs.append(match.group("selector") if match else text)
    return exprs


# --- every file parses; kustomizations are complete ----------------------------------------


def test_deploy_tree_has_yaml() -> None:
    assert len(yaml_files()) > 20


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_kubernetes_objects(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), path
        assert doc.get("apiVersion"), f"{path}: a document without apiVersion"
        assert doc.get("kind"), f"{path}: a document without kind"


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_references_exist(directory: Path) -> None:
    k = kustomization(directory)
    for entry in [*k.get("resources", []), *k.get("components", [])]:
        assert (directory / entry).exists(), f"{directory}: {entry} does not exist"
    for generator in k.get("configMapGenerator", []):
        for file in generator.get("files", []):
            assert (directory / file.split("=")[-1]).is_file(), f"{directory}: {file} does not exist"


def test_every_service_has_a_self_contained_base() -> None:
    service_dirs = {p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")}
    expected = set(SERVICES) | set(NO_BASE_YET)
    assert service_dirs == expected, "update SERVICES here (and deploy/k8s) for a new service"
    base_dirs = {p.name for p in BASE.iterdir() if p.is_dir()}
    assert base_dirs == set(SERVICES) | {TOPICS_BASE}
    for svc in SERVICES:
        k = kustomization(BASE / svc)
        resources = k.get("resources", [])
        assert all(".." not in r for r in resources), f"base/{svc} must not reach outside itself"
        assert "components" not in k
        listed = set(resources)
        on_disk = {p.name for p in (BASE / svc).glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk, f"base/{svc}: files not listed in kustomization.yaml: {on_disk - listed}"
        kinds = {d["kind"] for d in base_resources(svc)}
        assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= kinds, svc


def test_no_secret_is_committed() -> None:
    for path in yaml_files():
        for doc in load_docs(path):
            assert doc["kind"] != "Secret", f"{path}: reference Secrets, never commit them"
    for directory in (BASE, PRODUCTION):
        for k in directory.rglob("kustomization.yaml"):
            assert "secretGenerator" not in kustomization(k.parent), f"{k}: no secret values outside local"


# --- Deployments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "deployment"),
    all_base_deployments(),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_deployment_is_hardened_and_probed(service: str, deployment: Doc) -> None:
    name = deployment["metadata"]["name"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]), name

    # service account: none of the Kubernetes API
    assert pod["automountServiceAccountToken"] is False, name
    sa = one(base_resources(service), "ServiceAccount", pod["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False, name

    # pod security
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True, name
    assert isinstance(pod_sc["runAsUser"], int), name
    assert pod_sc["runAsUser"] == RUN_AS, name
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name

    c = container(deployment)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True, name
    assert isinstance(sc["runAsUser"], int), name
    assert sc["runAsUser"] == RUN_AS, name
    assert sc["readOnlyRootFilesystem"] is True, name
    assert sc["allowPrivilegeEscalation"] is False, name
    assert sc.get("privileged", False) is False, name
    assert "ALL" in sc["capabilities"]["drop"], name
    assert not sc["capabilities"].get("add"), name
    assert sc["seccompProfile"]["type"] == "RuntimeDefault", name

    # a writable /tmp on an emptyDir (the root filesystem is read-only)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "/tmp" in mounts, name
    assert "emptyDir" in volumes[mounts["/tmp"]], name

    # probes
    assert "livenessProbe" in c, name
    assert "readinessProbe" in c, name
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if name == WORKER:
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["tcpSocket"]["port"] in ports, name
    else:
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert ports["http"] == SERVICES[service].port, name

    # resources
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][section]), f"{name}: {section}"

    # image: this service's repository, pinned to a tag
    image = c["image"]
    assert image.startswith(f"{IMAGE_REPO}/{service}:"), image
    assert not image.endswith(":latest"), image


PUBLIC_KEYS_CONFIGMAP = "crm-jwt-public-keys"
SIGNING_KEY_SECRET = "gateway-jwt-signing-key"


def _mounted(deployment: Doc, env_value: str) -> Doc:
    """The volume holding the file an env var names (the mount must be read-only)."""
    mounts = container(deployment).get("volumeMounts", [])
    (mount,) = [m for m in mounts if env_value.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount.get("readOnly") is True, mount
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    volume: Doc = volumes[mount["name"]]
    return volume


def _assert_token_keys(service: str, deployment: Doc) -> None:
    """Every process verifies with the public keys (a ConfigMap); only the gateway mounts the
    private key (a Secret), and every other process follows the gateway's revocation list."""
    env = env_of(deployment)
    name = deployment["metadata"]["name"]
    public = _mounted(deployment, env["CRM_JWT_PUBLIC_KEYS_FILE"]["value"])
    assert public["configMap"]["name"] == PUBLIC_KEYS_CONFIGMAP, name
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    if service == "gateway":
        private = _mounted(deployment, env["CRM_JWT_PRIVATE_KEY_FILE"]["value"])
        assert private["secret"]["secretName"] == SIGNING_KEY_SECRET
        assert "CRM_REVOCATIONS_URL" not in env
    else:
        assert "CRM_JWT_PRIVATE_KEY_FILE" not in env, f"{name} must not be able to mint tokens"
        assert SIGNING_KEY_SECRET not in secrets, f"{name} must not mount the signing key"
        assert env["CRM_REVOCATIONS_URL"]["value"] == "http://gateway:8080/internal/revocations"


@pytest.mark.parametrize("service", list(SERVICES))
def test_service_configuration_and_own_database(service: str) -> None:
    spec = SERVICES[service]
    resources = base_resources(service)
    api = one(resources, "Deployment", service)
    env = env_of(api)
    value = {k: e.get("value") for k, e in env.items()}
    assert value["CRM_SERVICE_NAME"] == service
    assert value["CRM_ENV"] == "production"
    assert value["CRM_HTTP_HOST"] == "0.0.0.0"
    assert value["CRM_HTTP_PORT"] == str(spec.port)
    assert value.get("MONGODB_DATABASE") == spec.database
    assert ("MONGODB_URI" in env) is (spec.database is not None), "a database only where one is owned"
    assert ("KAFKA_BOOTSTRAP_SERVERS" in env) is spec.kafka
    if spec.kafka:
        assert value["CRM_PROVISION_TOPICS"] == "false", "topics are provisioned by Strimzi KafkaTopics"

    for deployment in of_kind(resources, "Deployment"):
        denv = env_of(deployment)
        if spec.database is not None:
            assert denv["MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"] == f"{service}-mongodb"
            assert denv["MONGODB_DATABASE"]["value"] == spec.database
        assert "CRM_JWT_SECRET" not in denv, "no shared signing secret: the gateway alone signs"
        _assert_token_keys(service, deployment)
        for name, entry in denv.items():
            if any(word in name for word in ("SECRET", "PASSWORD", "MONGODB_URI")):
                assert "value" not in entry, f"{name} must come from a Secret"

    service_obj = one(resources, "Service", service)
    assert selects(service_obj["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    (port,) = service_obj["spec"]["ports"]
    assert port["port"] == spec.port
    assert port["targetPort"] == "http"

    for deployment in of_kind(resources, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            p
            for p in of_kind(resources, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(pdbs) == 1, f"{deployment['metadata']['name']}: one PodDisruptionBudget"


def test_each_service_has_its_own_database_and_credentials() -> None:
    databases = [SERVICES[s].database for s in DATABASE_SERVICES]
    assert len(set(databases)) == len(databases)
    secrets = {
        env_of(one(base_resources(s), "Deployment", s))["MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"]
        for s in DATABASE_SERVICES
    }
    assert len(secrets) == len(DATABASE_SERVICES)


def test_the_console_talks_to_the_gateway_only() -> None:
    """No database, no Kafka, no department: the gateway's public API with each user's token."""
    resources = base_resources("console")
    (deployment,) = of_kind(resources, "Deployment")
    env = env_of(deployment)
    gateway = one(base_resources("gateway"), "Service", "gateway")
    assert env["CRM_CONSOLE_GATEWAY_URL"]["value"] == f"http://gateway:{gateway['spec']['ports'][0]['port']}"
    assert not {k for k in env if k.startswith(("MONGODB_", "KAFKA_"))}
    assert not of_kind(resources, "KafkaUser")
    key = _mounted(deployment, env["CRM_CONSOLE_SESSION_KEY_FILE"]["value"])
    assert key["secret"]["secretName"] == "console-session-key", "the cookie key comes from a Secret"
    urls = [str(e.get("value", "")) for e in env.values()]
    assert not [u for u in urls if "://" in u and not u.startswith("http://gateway:")], urls


def test_gateway_fronts_the_services_by_their_service_names() -> None:
    env = env_of(one(base_resources("gateway"), "Deployment", "gateway"))
    for variable, target in {**GATEWAY_URLS, **CONSOLE_URL}.items():
        svc = one(base_resources(target), "Service", target)
        assert env[variable]["value"] == f"http://{target}:{svc['spec']['ports'][0]['port']}"
    assert env["CRM_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "gateway-admin"


def test_analytics_worker_runs_alone_from_the_analytics_image() -> None:
    resources = base_resources("analytics")
    worker = one(resources, "Deployment", WORKER)
    api = one(resources, "Deployment", "analytics")
    assert worker["spec"]["replicas"] == 1
    assert worker["spec"]["strategy"]["type"] == "Recreate", "never two workers during a rollout"
    assert container(worker)["command"][-2:] == ["-m", "analytics.worker"]
    assert container(worker)["image"] == container(api)["image"]
    for service in SERVICES:
        for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            for scaler in of_kind(production_resources(service), kind):
                assert scaler["spec"]["scaleTargetRef"]["name"] != WORKER


def test_the_analytics_worker_is_scraped_on_its_web_port() -> None:
    worker = one(base_resources("analytics"), "Deployment", WORKER)
    ports = {p["name"]: p["containerPort"] for p in container(worker)["ports"]}
    assert env_of(worker)["CRM_ANALYTICS_WORKER_WEB_PORT"]["value"] == str(ports["faust-web"])
    monitors = load_docs(K8S / "components" / "podmonitor" / "podmonitor.yaml")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    scraping = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], labels)]
    assert [e["port"] for m in scraping for e in m["spec"]["podMetricsEndpoints"]] == ["faust-web"]


def test_prometheus_scrapes_every_http_pod() -> None:
    for service, deployment in all_base_deployments():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if deployment["metadata"]["name"] == WORKER:
            continue
        assert annotations["prometheus.io/scrape"] == "true", service
        assert annotations["prometheus.io/port"] == str(SERVICES[service].port), service
        assert annotations["prometheus.io/path"] == "/metrics", service


# --- Kafka topics -------------------------------------------------------------------------------


def test_kafka_topic_manifests_are_generated_from_the_topic_table() -> None:
    generator = load_generator()
    problems: list[str] = generator.check()
    assert problems == [], "\n".join(problems)


def test_kafka_topic_manifests_match_the_topic_table() -> None:
    directory = BASE / TOPICS_BASE
    docs = [d for r in kustomization(directory)["resources"] for d in load_docs(directory / r)]
    by_topic = {d["spec"]["topicName"]: d for d in docs}
    assert set(by_topic) == {t.name for t in TOPICS}
    for topic in TOPICS:
        doc = by_topic[topic.name]
        assert doc["kind"] == "KafkaTopic"
        assert doc["apiVersion"] == STRIMZI_API, "Strimzi 1.0 serves only kafka.strimzi.io/v1"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"]
        assert doc["spec"]["partitions"] == topic.partitions
        assert doc["spec"]["replicas"] == topic.replication_factor
        config = {k: str(v) for k, v in doc["spec"]["config"].items()}
        assert {k: config[k] for k in topic.topic_configs()} == topic.topic_configs()


def test_replicated_topics_never_lose_acknowledged_writes() -> None:
    """acks=all only protects a write when two replicas must hold it and no stale one may lead."""
    directory = BASE / TOPICS_BASE
    docs = [d for r in kustomization(directory)["resources"] for d in load_docs(directory / r)]
    for doc in docs:
        assert doc["spec"]["replicas"] >= 3, doc["spec"]["topicName"]
        config = {k: str(v) for k, v in doc["spec"]["config"].items()}
        assert config["min.insync.replicas"] == "2", doc["spec"]["topicName"]
        assert config["unclean.leader.election.enable"] == "false", doc["spec"]["topicName"]


def _acl_names(user: Doc, kind: str, operation: str) -> set[str]:
    return {
        acl["resource"]["name"]
        for acl in user["spec"]["authorization"]["acls"]
        if acl["resource"]["type"] == kind and operation in acl["operations"]
    }


@pytest.mark.parametrize("service", [s for s in SERVICES if SERVICES[s].kafka])
def test_each_department_may_write_only_its_own_topics_and_read_only_what_it_consumes(service: str) -> None:
    (user,) = of_kind(base_resources(service), "KafkaUser")
    assert user["apiVersion"] == STRIMZI_API
    assert user["metadata"]["name"] == f"crm-{service}"
    assert user["metadata"]["labels"]["strimzi.io/cluster"]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert user["spec"]["authorization"]["type"] == "simple"
    acls = user["spec"]["authorization"]["acls"]
    for acl in acls:
        assert "All" not in acl["operations"], acl
        assert acl["resource"].get("name") != "*", f"{service}: no wildcard ACLs"
        assert "operation" not in acl, "the deprecated singular `operation` is gone in the v1 API"

    writes = _acl_names(user, "topic", "Write")
    owners = {t.name: t.owner for t in TOPICS}
    shared = {t.name for t in TOPICS if service in t.producers}  # receipts, erasure confirmations
    foreign = {t for t in writes if owners.get(t) not in (service, None) and t not in shared}
    assert not foreign, f"{service} may write another department's topics: {foreign}"
    if service == "analytics":  # plus its faust changelogs (a prefix it owns)
        assert writes == {*produces(service), "crm-analytics-"}
    else:
        assert writes == set(produces(service))
    assert dead_letter_topic(service) in writes
    reads = _acl_names(user, "topic", "Read")
    assert set(CONSUMES[service]) <= reads
    if service == "analytics":
        assert reads == {*CONSUMES[service], "crm-analytics-"}
        assert _acl_names(user, "group", "Read") == {"crm-analytics"}
    elif service == "gateway":  # publishes the policy and erasure requests, reads their confirmations
        assert reads == {ERASURE_CONFIRMATIONS}
        assert writes == {GATEWAY_PERMISSIONS, GATEWAY_ERASURE_REQUESTS, dead_letter_topic(service)}
    else:
        assert reads == set(readable(service))
        assert HANDOFF_RECEIPTS in reads, "senders read the receipts of their handoffs"
        (group,) = [a["resource"] for a in acls if a["resource"]["type"] == "group"]
        assert group == {"type": "group", "name": service, "patternType": "prefix"}


@pytest.mark.parametrize("service", [s for s in SERVICES if SERVICES[s].kafka])
def test_each_kafka_deployment_authenticates_as_its_department(service: str) -> None:
    for deployment in of_kind(base_resources(service), "Deployment"):
        name = deployment["metadata"]["name"]
        env = env_of(deployment)
        value = {k: str(e.get("value")) for k, e in env.items()}
        assert value["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert value["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert value["KAFKA_SASL_USERNAME"] == f"crm-{service}", name
        password = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": f"crm-{service}", "key": "password"}, name
        assert value["KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093"), f"{name}: the TLS listener"
        cafile = Path(value["KAFKA_SSL_CAFILE"])
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mounts[str(cafile.parent)]]["secret"]
        assert secret["secretName"] == KAFKA_CA_SECRET, name
        assert {"key": "ca.crt", "path": cafile.name} in secret["items"], name


def test_services_subscribe_to_what_the_acls_allow() -> None:
    from analytics.worker import SOURCE_TOPICS
    from leads.consumers import TOPICS as LEADS
    from sales.consumers import TOPICS as SALES
    from service_desk.consumers import TOPICS as SERVICE_DESK

    declared = {"leads": LEADS, "sales": SALES, "service-desk": SERVICE_DESK, "analytics": SOURCE_TOPICS}
    for service, topics in declared.items():
        assert tuple(topics) == CONSUMES[service], f"{service}: update crm_contracts.access.CONSUMES"


def test_topic_generator_check_mode_exit_codes(tmp_path: Path) -> None:
    generator = load_generator()
    assert generator.main(["--check"]) == 0
    stale = tmp_path / "topics.yaml"
    stale.write_text(generator.render()[:-40], encoding="utf-8")
    assert generator.main(["--check", "--output", str(stale)]) == 1
    assert generator.main(["--check", "--output", str(tmp_path / "missing.yaml")]) == 1


# --- production overlay ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", list(SERVICES))
def test_production_overlay_per_service(service: str) -> None:
    k = kustomization(PRODUCTION / service)
    assert f"../../../base/{service}" in k["resources"], "each department deploys its own directory"
    assert k["namespace"]
    (image,) = [i for i in k["images"] if i["name"] == f"{IMAGE_REPO}/{service}"]
    assert DIGEST.fullmatch(str(image.get("digest", ""))), f"{service}: production pins its image by digest"

    hpas = of_kind(production_resources(service), "HorizontalPodAutoscaler")
    scaled = of_kind(production_resources(service), "ScaledObject")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    removes_replicas = any(
        "/spec/replicas" in str(p.get("patch", "")) and "remove" in str(p.get("patch", ""))
        for p in k.get("patches", [])
    )
    if service in HPA_SERVICES:
        (hpa,) = hpas
        assert scaled == [], f"{service}: one owner of replicas"
        assert hpa["spec"]["scaleTargetRef"] == target
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert removes_replicas, f"{service}: the HPA, not kubectl apply, owns spec.replicas"
    elif service in KEDA_SERVICES:
        (scaled_object,) = scaled
        assert hpas == [], f"{service}: KEDA makes its own HPA; a second one would fight it"
        assert scaled_object["spec"]["scaleTargetRef"] == target
        assert removes_replicas, f"{service}: KEDA, not kubectl apply, owns spec.replicas"
    else:
        assert hpas == []
        assert scaled == []
        assert not removes_replicas, f"{service}: a fixed replica count"


def _secrets_used(deployment: Doc) -> set[tuple[str, str]]:
    """(Secret, key) pairs a Deployment reads: env secretKeyRefs and secret volumes' items."""
    pod = deployment["spec"]["template"]["spec"]
    used = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container(deployment).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items")
            keys = [i["key"] for i in items] if items else ["*"]
            used |= {(volume["secret"]["secretName"], key) for key in keys}
    return used


def test_the_kafka_cluster_ca_comes_through_external_secrets_in_the_platform_overlay() -> None:
    """Not copied by hand from Strimzi's namespace: ESO makes it in `crm` and follows its renewals."""
    resources = production_resources("platform")
    (external,) = [
        e for e in of_kind(resources, "ExternalSecret") if e["spec"]["target"]["name"] == KAFKA_CA_SECRET
    ]
    assert external["apiVersion"] == EXTERNAL_SECRETS_API
    assert external["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "strimzi-kafka"}
    (item,) = external["spec"]["data"]
    assert item["secretKey"] == "ca.crt"
    assert item["remoteRef"] == {"key": KAFKA_CA_SECRET, "property": "ca.crt"}, "Strimzi's own Secret"
    mounted = {
        s for svc in SERVICES for d in of_kind(base_resources(svc), "Deployment") for s, _ in _secrets_used(d)
    }
    assert KAFKA_CA_SECRET in mounted, "the departments mount it"


@pytest.mark.parametrize("service", list(SERVICES))
def test_production_secrets_come_from_the_secret_manager(service: str) -> None:
    """Every Secret a production pod reads is made by an ExternalSecret of its own overlay (or by
    Strimzi), with the keys the pod reads; nothing secret is a literal anywhere in production."""
    resources = production_resources(service)
    external = {e["spec"]["target"]["name"]: e for e in of_kind(resources, "ExternalSecret")}
    for doc in external.values():
        assert doc["apiVersion"] == EXTERNAL_SECRETS_API
        assert doc["spec"]["secretStoreRef"]["kind"] == "ClusterSecretStore"
        for item in doc["spec"]["data"]:
            assert item["remoteRef"]["key"], doc["metadata"]["name"]
    used: set[tuple[str, str]] = set()
    for deployment in of_kind(base_resources(service), "Deployment"):
        used |= _secrets_used(deployment)
    for secret, key in used:
        if secret in STRIMZI_SECRETS | PLATFORM_SECRETS:
            continue
        assert secret in external, f"{service}: Secret {secret} has no ExternalSecret in its overlay"
        keys = {item["secretKey"] for item in external[secret]["spec"]["data"]}
        assert key in keys or key == "*", f"{service}: {secret} lacks the key {key}"
    assert set(external) == {s for s, _ in used} - STRIMZI_SECRETS - PLATFORM_SECRETS, "one nobody reads"
    assert not of_kind(resources, "Secret")


def _partitions() -> dict[str, int]:
    return {t.name: t.partitions for t in TOPICS}


@pytest.mark.parametrize("service", sorted(KEDA_SERVICES))
def test_keda_scales_each_consumer_on_lag_and_cpu_within_its_partitions(service: str) -> None:
    """One kafka trigger per topic the service consumes (its own group, its own principal),
    plus CPU; maxReplicaCount never above the partitions of those topics (from the topic table):
    a pod beyond them would hold no partition."""
    resources = production_resources(service)
    (scaled,) = of_kind(resources, "ScaledObject")
    assert scaled["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    triggers = spec["triggers"]
    kafka = [tr for tr in triggers if tr["type"] == "kafka"]
    consumer = [tr for tr in kafka if tr["metadata"]["consumerGroup"] == service]
    assert {tr["metadata"]["topic"] for tr in consumer} == set(CONSUMES[service])
    assert len(consumer) == len(CONSUMES[service])
    # The receipt listener's own group (crm_platform.receipts) scales the pods too.
    (receipts,) = [tr for tr in kafka if tr not in consumer]
    assert receipts["metadata"]["consumerGroup"] == f"{service}.handoff-receipts"
    assert receipts["metadata"]["topic"] == HANDOFF_RECEIPTS
    env = env_of(one(base_resources(service), "Deployment", service))
    auths = {a["metadata"]["name"]: a for a in of_kind(resources, "TriggerAuthentication")}
    for trigger in kafka:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] in (service, f"{service}.handoff-receipts"), (
            "its groups (CRM_CONSUMER_GROUP)"
        )
        assert meta["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
        assert str(meta["allowIdleConsumers"]) == "false", "KEDA's own cap: no idle consumers"
        assert int(meta["lagThreshold"]) > 0
        assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable"), "the TLS listener, SCRAM"
        auth = auths[trigger["authenticationRef"]["name"]]["spec"]
        secrets = {r["parameter"]: (r["name"], r["key"]) for r in auth["secretTargetRef"]}
        assert secrets["password"] == (f"crm-{service}", "password"), "its own KafkaUser's secret"
        assert secrets["ca"] == (KAFKA_CA_SECRET, "ca.crt")
        (username,) = [e for e in auth["env"] if e["parameter"] == "username"]
        assert env[username["name"]]["value"] == f"crm-{service}"
    (cpu,) = [tr for tr in triggers if tr["type"] == "cpu"]
    assert cpu["metricType"] == "Utilization"
    assert 0 < int(cpu["metadata"]["value"]) <= 100

    bound = max(_partitions()[topic] for topic in (*CONSUMES[service], HANDOFF_RECEIPTS))
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= bound, (
        f"{service}: maxReplicaCount {spec['maxReplicaCount']} above the {bound} partitions it consumes"
    )


def test_every_scaled_object_targets_a_consumer_and_no_deployment_has_two_scalers() -> None:
    owners: dict[str, list[str]] = {}
    for service in SERVICES:
        for doc in production_resources(service):
            if doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"):
                name = doc["spec"]["scaleTargetRef"]["name"]
                owners.setdefault(name, []).append(doc["kind"])
                if doc["kind"] == "ScaledObject":
                    assert name in KEDA_SERVICES, f"a ScaledObject on {name}, which consumes nothing"
    assert all(len(kinds) == 1 for kinds in owners.values()), owners
    assert WORKER not in owners, "the analytics worker runs exactly one replica"
    assert set(owners) == HPA_SERVICES | KEDA_SERVICES


def test_the_revocation_list_stays_inside_the_cluster() -> None:
    """Services poll the gateway's /internal/revocations; the public ingress never routes it."""
    (ingress,) = of_kind(production_resources("gateway"), "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths
    prefixes = [p["path"] for p in paths if p["pathType"] != "Exact"]
    routed = [p for p in prefixes if p == "/" or "/internal/revocations".startswith(p.rstrip("/") + "/")]
    assert not routed, paths
    assert "/internal/revocations" not in [p["path"] for p in paths]


def test_the_ingress_routes_every_console_page_and_nothing_internal() -> None:
    """The gateway serves the console at /: each page's first path segment must be routed
    (a new page without its Ingress path would 404 in production), and never a prefix that
    would also publish /metrics, /healthz, /readyz or /internal."""
    from console.bootstrap import ROUTERS

    (ingress,) = of_kind(production_resources("gateway"), "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    prefixes = {p["path"] for p in paths if p["pathType"] == "Prefix"}
    exact = {p["path"] for p in paths if p["pathType"] == "Exact"}
    pages = {route.path for router in ROUTERS for route in router.routes}  # type: ignore[attr-defined]
    assert "/" in pages
    assert "/" in exact, "the console's home page: an exact match, never a prefix"
    firsts = {"/" + page.split("/")[1] for page in pages if page != "/"} | {"/static"}
    assert firsts <= prefixes, f"console pages the Ingress does not route: {sorted(firsts - prefixes)}"
    for internal in ("/metrics", "/healthz", "/readyz", "/internal"):
        assert internal not in prefixes | exact, internal


def test_production_overlay_includes_everything() -> None:
    k = kustomization(PRODUCTION)
    assert set(k["resources"]) == {*SERVICES, "platform", f"../../base/{TOPICS_BASE}"}
    assert "namespace" not in k, "the KafkaTopics must stay in the Kafka cluster's namespace"
    platform = [
        d
        for r in kustomization(PRODUCTION / "platform")["resources"]
        for d in load_docs(PRODUCTION / "platform" / r)
    ]
    (deny,) = [d for d in of_kind(platform, "NetworkPolicy") if d["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress")
    assert not deny["spec"].get("egress")


def _ports(rules: list[Doc]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports", [])}


def _peer_names(rule: Doc) -> set[str]:
    names: set[str] = set()
    peers: list[Doc] = rule.get("from") or rule.get("to") or []
    for peer in peers:
        pod = peer.get("podSelector", {}).get("matchLabels", {})
        ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
        names.add(pod.get("app.kubernetes.io/name") or ns.get("kubernetes.io/metadata.name") or "?")
    return names


@pytest.mark.parametrize("service", list(SERVICES))
def test_production_network_policies(service: str) -> None:
    policies = of_kind(production_resources(service), "NetworkPolicy")
    for deployment in of_kind(base_resources(service), "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]
        (policy,) = matching
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        ingress: list[Doc] = spec.get("ingress") or []
        egress: list[Doc] = spec["egress"]
        name = deployment["metadata"]["name"]

        if name == WORKER:
            sources = set().union(*(_peer_names(r) for r in ingress))
            assert sources == {"prometheus"}, "the worker takes no inbound traffic but the scrape"
            assert _ports(ingress) == {6066}, "faust's web port serves its /metrics"
        elif service == "gateway":
            sources = set().union(*(_peer_names(r) for r in ingress))
            # the departments only for the revocation list they poll; the console for the API
            assert sources == {"ingress-nginx", "prometheus", "console", *GATEWAY_URLS.values()}
            assert _ports(ingress) == {SERVICES[service].port}
        else:
            sources = set().union(*(_peer_names(r) for r in ingress))
            assert sources == {"gateway", "prometheus"}, "only the gateway (and Prometheus) may call in"
            assert _ports(ingress) == {SERVICES[service].port}

        egress_ports = _ports(egress)
        if service == "console":
            assert egress_ports == {53, SERVICES["gateway"].port}, "DNS and the gateway only"
            assert set().union(*(_peer_names(r) for r in egress)) == {"gateway", "kube-system"}
            continue
        assert {53, 27017} <= egress_ports, "DNS and MongoDB"
        if service == "gateway":
            upstream_ports = {SERVICES[s].port for s in (*GATEWAY_URLS.values(), "console")}
            assert egress_ports == {53, 27017} | upstream_ports, "no Kafka for the gateway"
        elif name == WORKER:
            assert egress_ports == {53, 9093, 27017}, "DNS, Kafka (TLS), MongoDB only: it polls nothing"
            continue
        else:
            assert egress_ports == {53, 8080, 9093, 27017}, (
                "DNS, the gateway, Kafka (TLS listener), MongoDB only"
            )
            to_gateway = [r for r in egress if _peer_names(r) == {"gateway"}]
            assert _ports(to_gateway) == {SERVICES["gateway"].port}, "the gateway: its revocation list"


# --- Dockerfiles ----------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out: list[tuple[str, str]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("service", list(SERVICES))
def test_dockerfile(service: str) -> None:
    spec = SERVICES[service]
    path = ROOT / "services" / service / "Dockerfile"
    instructions = dockerfile_instructions(path)
    froms = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    final = instructions[froms[-1] :]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    copies = [rest for kw, rest in instructions if kw == "COPY"]

    # Its own lock (exported from uv.lock), hashes required, nothing resolved at build time;
    # then shared/ and the service as wheels without dependencies (scripts/service_image.py).
    assert "uv pip install --require-hashes --no-deps -r requirements.lock" in runs
    assert f"--no-deps --no-sources ./shared/contracts ./shared/platform ./services/{service}" in runs
    assert f"services/{service}/requirements.lock ./requirements.lock" in copies
    assert any(c.split()[0] == "shared" for c in copies), "copies shared/"
    assert f"services/{service} ./services/{service}" in copies
    sources = [c.split()[0] for c in copies if not c.startswith("--from")]
    assert all(src == "shared" or src.startswith(f"services/{service}") for src in sources), (
        "copies nothing but shared/ and this service: its context holds nothing else"
    )

    users = [rest for kw, rest in final if kw == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric user"
    assert int(uid) != 0, "a non-root user"
    assert int(uid) == RUN_AS, "the same uid as the pods' runAsUser"
    assert not gid or (gid.isdigit() and int(gid) != 0)

    assert ("EXPOSE", str(spec.port)) in final
    (entrypoint,) = [json.loads(rest) for kw, rest in final if kw == "ENTRYPOINT"]
    assert entrypoint[-2:] == ["-m", f"{spec.package}.main"], "exec form, no shell"
    assert all(not rest.lstrip().startswith(("sh ", "/bin/sh", "bash")) for kw, rest in final if kw == "CMD")


def test_dockerignore_keeps_the_context_small() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"*", "!pyproject.toml", "!uv.lock", "!shared/", "!services/"} <= lines
    assert {"**/.venv/", "**/tests/"} <= lines


# --- monitoring ---------------------------------------------------------------------------------------


def test_metric_contract_names_exist_in_the_code() -> None:
    sources = [
        *(ROOT / "shared" / "platform" / "src").rglob("*.py"),
        *(ROOT / "services").glob("*/src/**/*.py"),
    ]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    for name in CRM_METRICS:
        declared = name.removesuffix("_total")  # prometheus_client adds _total to counters
        assert f'"{declared}"' in text or f'"{name}"' in text, f"no service declares the metric {name}"


def test_alerts_use_only_exported_metrics() -> None:
    for rule in prometheus_rules():
        unknown = metric_names(rule["expr"]) - ALLOWED_SERIES
        assert not unknown, f"{rule.get('alert')}: unknown metrics {sorted(unknown)}"


def recorded_series() -> set[str]:
    (doc,) = load_docs(MONITORING / "slo-rules.yaml")
    return {r["record"] for g in doc["spec"]["groups"] for r in g["rules"] if "record" in r}


def test_dashboard_uses_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        unknown = metric_names(expr) - ALLOWED_SERIES - recorded_series()
        assert not unknown, f"dashboard query {expr!r}: unknown metrics {sorted(unknown)}"


def test_dashboard_is_scoped_by_cluster_and_namespace_and_shows_error_budgets() -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "cluster", "namespace"} <= variables
    panel_exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]
    for expr in panel_exprs:
        selectors = re.findall(r"\b(crm[_:][A-Za-z0-9_:]*)(\{[^{}]*\})?", expr)
        for name, matchers in selectors:
            if name.endswith("error_budget_ratio"):
                continue  # a constant per handoff, the same in every namespace
            assert 'namespace=~"$namespace"' in matchers, f"{name} unscoped in {expr!r}"
            assert 'cluster=~"$cluster"' in matchers, f"{name} unscoped in {expr!r}"
    titles = " ".join(p.get("title", "") for p in dashboard_panels())
    for kind in ("Transport", "Business"):
        assert f"{kind} SLO: error budget remaining" in titles
        assert f"{kind} SLO: burn rate" in titles


def test_slo_rules_use_only_exported_or_recorded_series() -> None:
    (doc,) = load_docs(MONITORING / "slo-rules.yaml")
    rules = [rule for group in doc["spec"]["groups"] for rule in group["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - ALLOWED_SERIES - recorded
        assert not unknown, f"{rule.get('alert') or rule['record']}: unknown metrics {sorted(unknown)}"
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            for key in ("summary", "description", "runbook"):
                assert str(rule["annotations"].get(key, "")).strip(), f"{rule['alert']}: no {key}"


def test_every_alert_is_documented() -> None:
    rules = prometheus_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert str(rule["annotations"].get(key, "")).strip(), f"{rule['alert']}: no {key}"


def _threshold(expr: str) -> float:
    match = re.search(r">\s*([0-9.e+]+)\s*$", expr.strip())
    assert match, expr
    return float(match.group(1))


def test_transport_latency_alert_per_handoff() -> None:
    rules = prometheus_rules()
    for handoff in HANDOFFS:
        matching = [
            r
            for r in rules
            if "histogram_quantile(0.99" in r["expr"]
            and "crm_handoff_transport_latency_seconds_bucket" in r["expr"]
            and f'handoff="{handoff.name}"' in r["expr"]
        ]
        assert len(matching) == 1, f"one p99 transport latency alert for {handoff.name}"
        assert matching[0]["labels"]["handoff"] == handoff.name
        assert _threshold(matching[0]["expr"]) > 0


@pytest.mark.parametrize(("handoff", "sla_seconds"), [("lead-qualified", 3600), ("deal-won", 86400)])
def test_business_latency_sla_alerts(handoff: str, sla_seconds: int) -> None:
    matching = [
        r
        for r in prometheus_rules()
        if "crm_analytics_handoff_latency_seconds" in r["expr"]
        and f'handoff="{handoff}"' in r["expr"]
        and 'kind="business"' in r["expr"]
        and 'quantile="0.95"' in r["expr"]
    ]
    assert len(matching) == 1
    assert _threshold(matching[0]["expr"]) == sla_seconds


def test_pipeline_and_readiness_alerts_exist() -> None:
    rules = prometheus_rules()

    def using(metric: str) -> list[Doc]:
        return [r for r in rules if metric in metric_names(r["expr"])]

    assert using("crm_dead_lettered_total"), "dead letters increasing"
    assert any(r["for"] == "5m" and "deriv(" in r["expr"] for r in using("crm_outbox_backlog")), (
        "outbox backlog growing for 5 minutes"
    )
    assert using("crm_consumer_lag"), "consumer lag high"
    assert using("kube_deployment_status_replicas_available"), "a service not ready"


def test_dashboard_covers_every_handoff_and_pipeline_signal() -> None:
    board = dashboard()
    assert board["uid"] == "crm-handoffs"
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for handoff in HANDOFFS:
        panels = [
            p
            for p in dashboard_panels()
            if any(
                f'handoff="{handoff.name}"' in t.get("expr", "")
                and "crm_handoff_transport_latency_seconds_bucket" in t.get("expr", "")
                for t in p.get("targets", [])
            )
        ]
        assert panels, f"no transport latency panel for {handoff.name}"
        exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
        for q in ("0.50", "0.95", "0.99"):
            assert f"histogram_quantile({q}" in exprs, f"{handoff.name}: p{q}"
    all_exprs = " ".join(dashboard_exprs())
    assert 'kind="business"' in all_exprs
    for metric in (
        "crm_outbox_backlog",
        "crm_dead_lettered_total",
        "crm_consumer_lag",
        "crm_analytics_funnel",
    ):
        assert metric in all_exprs, metric


def test_deploy_readme_exists() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "kubectl apply -k deploy/k8s/base/",
        "overlays/production",
        "gen_k8s_topics.py",
        "prometheusrule.yaml",
        "crm-handoffs.json",
    ):
        assert needle in text, needle
