"""The release gate compares the schemas with what is released, not only within the tree."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from crm_contracts.release_gate import check, current_schemas, main, released_ref, released_schemas

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

SCHEMAS = current_schemas()


def _deal_won() -> dict[str, Any]:
    return copy.deepcopy(SCHEMAS["deal.won.v1.json"])


def test_the_tree_releases_against_itself() -> None:
    assert check(SCHEMAS, SCHEMAS) == []


def test_changing_a_released_schema_in_place_fails_even_when_compatible() -> None:
    changed = _deal_won()
    changed["properties"]["note"] = {"type": "string"}  # an optional field: fine in a v2, not in v1
    problems = check(SCHEMAS, {**SCHEMAS, "deal.won.v1.json": changed})
    assert len(problems) == 1
    assert "deal.won.v1.json: a released schema was changed in place" in problems[0]
    assert "publish a new version" in problems[0]


def test_a_breaking_in_place_change_names_the_field() -> None:
    changed = _deal_won()
    del changed["properties"]["deal_id"]
    (problem,) = check(SCHEMAS, {**SCHEMAS, "deal.won.v1.json": changed})
    assert "field 'deal_id' removed" in problem


def test_documentation_changes_are_not_wire_changes() -> None:
    changed = _deal_won()
    changed["description"] = "reworded"
    assert check(SCHEMAS, {**SCHEMAS, "deal.won.v1.json": changed}) == []


def test_removing_a_released_schema_fails() -> None:
    current = {k: v for k, v in SCHEMAS.items() if k != "deal.won.v1.json"}
    (problem,) = check(SCHEMAS, current)
    assert "deal.won.v1.json: a released schema was removed" in problem


def test_a_new_version_must_be_compatible_with_the_released_one() -> None:
    released = {k: v for k, v in SCHEMAS.items() if k == "deal.won.v1.json"}  # v1 is the latest release
    v2 = _deal_won()
    v2["required"] = [*v2["required"], "note"]
    v2["properties"]["note"] = {"type": "string"}
    (problem,) = check(released, {**released, "deal.won.v2.json": v2})
    assert problem.startswith("deal.won.v2.json vs released v1: field 'note' added as required")
    v2["required"].remove("note")
    assert check(released, {**released, "deal.won.v2.json": v2}) == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose main holds the schemas, released as v1.0.0, then changed on a branch."""
    schemas = tmp_path / "shared" / "contracts" / "schemas"
    schemas.mkdir(parents=True)
    (schemas / "deal.won.v1.json").write_text(json.dumps(_deal_won()))
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "schemas")
    return tmp_path


def test_the_released_ref_is_the_last_tag_else_main(repo: Path) -> None:
    assert released_ref(repo) == "main"
    _git(repo, "tag", "v1.0.0")
    assert released_ref(repo) == "v1.0.0"
    schemas = released_schemas(repo, "v1.0.0", repo / "shared" / "contracts" / "schemas")
    assert set(schemas) == {"deal.won.v1.json"}


def test_a_checkout_without_main_compares_with_origin_main_else_head(repo: Path) -> None:
    _git(repo, "checkout", "-q", "--detach")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    _git(repo, "branch", "-q", "-D", "main")
    assert released_ref(repo) == "origin/main"
    _git(repo, "update-ref", "-d", "refs/remotes/origin/main")
    assert released_ref(repo) == "HEAD"


def test_the_command_fails_on_an_in_place_change_against_the_release(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import crm_contracts.release_gate as gate

    directory = repo / "shared" / "contracts" / "schemas"
    monkeypatch.setattr(gate, "SCHEMA_DIR", directory)
    _git(repo, "tag", "v1.0.0")
    assert main(["--repo", str(repo)]) == 0
    changed = _deal_won()
    changed["properties"]["deal_id"] = {"type": "integer"}
    (directory / "deal.won.v1.json").write_text(json.dumps(changed))
    assert main(["--repo", str(repo)]) == 1
    assert "changed in place" in capsys.readouterr().err
    assert main(["--repo", str(repo), "--against", "no-such-ref"]) == 2
