"""House habits the linters do not check: no function over about 50 lines without a reason.

A function of the product code (``SOURCES``: the packages, scripts and benchmarks; tests are
scenarios and are not counted) longer than :data:`MAX_LINES` must say why in its docstring, in
a sentence starting ``Why long:``. Those that were longer when the rule came in (issue 11)
were listed in :data:`KNOWN_LONG` until split; it is empty now, and new code cannot add to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.tooling  # repository artefacts and external tools: make test, not make unit

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 50
SOURCES = ["shared/contracts/src", "shared/platform/src", "services", "scripts", "bench"]

# path:function -> still over the limit (scripts/run_platform.py's run() grew the demo history).
KNOWN_LONG: set[str] = set()


def _sources() -> list[Path]:
    files: list[Path] = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/tests/" not in relative and "/.venv/" not in relative:
                files.append(path)
    return files


def reasonless_long_functions(source: str, relative: str) -> list[str]:
    """The functions of ``source`` over the limit, not known and not justified in their docstring."""
    found = []
    for node in ast.walk(ast.parse(source, filename=relative)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= MAX_LINES or f"{relative}:{node.name}" in KNOWN_LONG:
            continue
        if "Why long:" not in (ast.get_docstring(node) or ""):
            found.append(f"{relative}:{node.lineno} {node.name} ({length} lines)")
    return found


def long_functions_without_a_reason() -> list[str]:
    found = []
    for path in _sources():
        found += reasonless_long_functions(path.read_text(), path.relative_to(ROOT).as_posix())
    return found


def test_no_function_over_50_lines_without_a_reason_in_its_docstring() -> None:
    found = long_functions_without_a_reason()
    assert not found, (
        f"functions over {MAX_LINES} lines: split them, or say why in the docstring "
        "('Why long: ...'):\n" + "\n".join(found)
    )


def test_the_check_finds_a_long_function_and_accepts_a_reason() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    short = "def f() -> None:\n    x = 1\n"
    unexplained = f'async def g() -> None:\n    """A story."""\n{body}\n'
    explained = f'def h() -> None:\n    """Why long: one table."""\n{body}\n'
    assert reasonless_long_functions(short + unexplained + explained, "m.py") == ["m.py:3 g (52 lines)"]


def test_pre_commit_runs_the_checks_make_test_runs() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = {hook["entry"] for repo in config["repos"] for hook in repo["hooks"]}
    script = (ROOT / "scripts" / "test.sh").read_text()
    for check in (
        "ruff check",
        "ruff format --check",
        "mypy",
        "-m crm_contracts.schemas",
        "gen_asyncapi.py --check",
        "-m crm_contracts.release_gate",
    ):
        assert check in script, f"make test no longer runs {check!r}: update this test and the hooks"
        assert any(check in entry for entry in entries), f"pre-commit does not run {check!r}"
    assert "make test" in entries
    assert "make unit" in entries
