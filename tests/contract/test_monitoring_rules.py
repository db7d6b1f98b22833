"""The alerting and recording rules, checked and unit-tested by Prometheus' own promtool.

- ``promtool check rules`` on both PrometheusRules (syntax, templates, lint);
- ``promtool test rules`` on ``deploy/monitoring/tests/*.test.yaml``, which feed synthetic
  series to the rules and state which alerts fire with which labels (and which stay quiet);
- every alert and every recording rule is exercised by some test;
- the SLO rules are the generated ones (``scripts/gen_slo_rules.py --check``) and read only
  series the services export;
- every monitoring resource follows the one selector convention (deploy/README.md).

promtool comes from the OS (Debian: ``apt-get install prometheus``; ``make test`` installs it
when missing). Missing, these tests FAIL with that instruction: they never skip.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = {"crm-alerts": MONITORING / "prometheusrule.yaml", "crm-slos": MONITORING / "slo-rules.yaml"}
TESTS = sorted((MONITORING / "tests").glob("*.test.yaml"))
SELECTOR_LABELS = {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "crm"}
MONITORING_KINDS = {"PrometheusRule", "PodMonitor", "ServiceMonitor"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: the alert and recording rule tests need it. "
            "Install it with `sudo apt-get install prometheus` (Debian/Ubuntu; make test does this when "
            "run as root) or put Prometheus' promtool on PATH."
        )
    return found


def rule_groups(name: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES[name].read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = doc["spec"]["groups"]
    return groups


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(name) for rule in group["rules"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests beside rules/<name>.yml: plain rule files extracted from the PrometheusRules.

    Annotations are stripped for the unit tests (promtool compares them verbatim, so each
    test would restate every description); ``check rules`` validates their templates.
    """
    work = tmp_path_factory.mktemp("promtool")
    (work / "rules").mkdir()
    for name in RULES:
        full = {"groups": rule_groups(name)}
        (work / f"{name}.full.yml").write_text(yaml.safe_dump(full), encoding="utf-8")
        bare = {
            "groups": [{**g, "rules": [_without_annotations(r) for r in g["rules"]]} for g in full["groups"]]
        }
        (work / "rules" / f"{name}.yml").write_text(yaml.safe_dump(bare), encoding="utf-8")
    for test in TESTS:
        shutil.copy(test, work / test.name)
    return work


def _without_annotations(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if k != "annotations"}


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("name", list(RULES))
def test_promtool_check_rules(name: str, workdir: Path) -> None:
    _run("check", "rules", f"{name}.full.yml", cwd=workdir)


@pytest.mark.parametrize("test", [t.name for t in TESTS])
def test_promtool_unit_tests(test: str, workdir: Path) -> None:
    _run("test", "rules", test, cwd=workdir)


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    alerts_tested: set[str] = set()
    exprs: list[str] = []
    for path in TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            alerts_tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
            exprs += [t["expr"] for t in case.get("promql_expr_test", [])]
    all_rules = [r for name in RULES for r in rules(name)]
    untested = sorted({r["alert"] for r in all_rules if "alert" in r} - alerts_tested)
    assert not untested, f"alerts without a promtool test: {untested}"
    records = {r["record"] for r in all_rules if "record" in r}
    unchecked = sorted(r for r in records if not any(r in e for e in exprs))
    assert not unchecked, f"recording rules no promql_expr_test evaluates: {unchecked}"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_slo_rules", ROOT / "scripts" / "gen_slo_rules.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_slo_rules", module)
    spec.loader.exec_module(module)
    return module


def test_slo_rules_are_generated_from_the_slo_table() -> None:
    problems: list[str] = load_generator().check()
    assert not problems, "\n".join(problems)


def test_slo_bounds_must_be_histogram_buckets(tmp_path: Path) -> None:
    generator = load_generator()
    config = yaml.safe_load((MONITORING / "slos.yaml").read_text(encoding="utf-8"))
    config["handoffs"]["deal-won"]["transport"]["bound_seconds"] = 45
    bad = tmp_path / "slos.yaml"
    bad.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ValueError, match="not a bucket"):
        generator.load(bad)


def test_every_handoff_has_a_transport_slo_and_a_receipts_alert() -> None:
    from crm_contracts.handoffs import HANDOFFS

    recorded = [r for r in rules("crm-slos") if "record" in r]
    for handoff in HANDOFFS:
        mine = {r["record"] for r in recorded if r.get("labels", {}).get("handoff") == handoff.name}
        assert "crm:handoff_transport_errors:ratio_rate1h" in mine, handoff.name
        assert "crm:handoff_transport_slo:error_budget_ratio" in mine, handoff.name
        assert "crm:handoff_sent:increase15m" in mine, handoff.name
    names = {r.get("alert") for r in rules("crm-slos")}
    assert {
        "CrmHandoffTransportSloFastBurn",
        "CrmHandoffTransportSloSlowBurn",
        "CrmHandoffReceiptsStopped",
    } <= names


def test_monitoring_resources_follow_one_selector_convention() -> None:
    found = 0
    for path in (ROOT / "deploy").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") in MONITORING_KINDS:
                found += 1
                labels = doc["metadata"].get("labels", {})
                assert SELECTOR_LABELS.items() <= labels.items(), (
                    f"{path}: {doc['metadata']['name']} {labels}"
                )
    assert found >= 4  # two PrometheusRules, two PodMonitors
