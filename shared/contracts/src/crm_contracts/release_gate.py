"""The release gate: the checked-in schemas against what is already RELEASED.

``crm_contracts.compat`` compares two versions in one tree; a release also needs
the schemas that consumers in production were built against to stay as they are:

- a published schema (same event type and version) must not change in place: its
  wire meaning is fixed once released (documentation keys aside); publish a new
  version instead;
- a published schema must not disappear while it can still be on the topics;
- a new version of a published event must pass the compatibility gate against the
  highest released version (only optional fields added).

"Released" is the last release tag reachable from HEAD (``v*``, e.g. ``v1.4.0``, or
``release-*``), or the ``main`` branch when there is none; ``--against REF`` names
another. ``make test`` runs it (on main itself it compares main with main).

    python -m crm_contracts.release_gate [--against REF]   # exit 1 = do not release
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from crm_contracts.compat import breaking_changes

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
TAG_PATTERNS = ("v[0-9]*", "release-*")
DEFAULT_BRANCH = "main"
# Keys that document a schema without changing what is valid on the wire.
DOC_KEYS = frozenset({"description", "title", "examples"})

Schema = dict[str, Any]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def released_ref(repo: Path) -> str:
    """The last release tag reachable from HEAD, else the default branch (local or ``origin/``).

    A checkout that has neither (a CI job on a detached commit of a single-branch clone)
    compares with ``HEAD``: the checked-out tree is then the only release it knows of.
    """
    for pattern in TAG_PATTERNS:
        try:
            return _git(repo, "describe", "--tags", "--abbrev=0", "--match", pattern, "HEAD").strip()
        except RuntimeError:
            continue
    for branch in (DEFAULT_BRANCH, f"origin/{DEFAULT_BRANCH}"):
        try:
            _git(repo, "rev-parse", "--verify", "--quiet", f"{branch}^{{commit}}")
            return branch
        except RuntimeError:
            continue
    return "HEAD"


def released_schemas(repo: Path, ref: str, directory: Path = SCHEMA_DIR) -> dict[str, Schema]:
    """The schema files of ``directory`` as they are at ``ref`` (by file name)."""
    rel = directory.resolve().relative_to(repo.resolve()).as_posix()
    names = _git(repo, "ls-tree", "--name-only", f"{ref}:{rel}").split()
    files = [name for name in names if name.endswith(".json")]
    return {name: json.loads(_git(repo, "show", f"{ref}:{rel}/{name}")) for name in files}


def current_schemas(directory: Path = SCHEMA_DIR) -> dict[str, Schema]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))}


def _wire(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _wire(v) for k, v in node.items() if k not in DOC_KEYS}
    if isinstance(node, list):
        return [_wire(v) for v in node]
    return node


def _key(name: str) -> tuple[str, int]:
    """``deal.won.v1.json`` -> (``deal.won``, 1)."""
    stem = name.removesuffix(".json")
    event_type, _, version = stem.rpartition(".v")
    return event_type, int(version)


def check(released: dict[str, Schema], current: dict[str, Schema]) -> list[str]:
    """Every reason the current schemas cannot be released after ``released``."""
    problems: list[str] = []
    for name, old in sorted(released.items()):
        if name not in current:
            problems.append(f"{name}: a released schema was removed (its events may still be on the topics)")
        elif _wire(old) != _wire(current[name]):
            changes = breaking_changes(old, current[name])
            detail = "; ".join(changes) if changes else "its wire meaning differs"
            problems.append(
                f"{name}: a released schema was changed in place ({detail}); publish a new version instead"
            )
    highest: dict[str, int] = {}
    for name in released:
        event_type, version = _key(name)
        highest[event_type] = max(version, highest.get(event_type, 0))
    for name in sorted(current.keys() - released.keys()):
        event_type, version = _key(name)
        last = highest.get(event_type)
        if last is None:
            continue  # a new event: nothing released to stay compatible with
        if version < last:
            problems.append(f"{name}: older than the released v{last}")
            continue
        old = released[f"{event_type}.v{last}.json"]
        problems += [f"{name} vs released v{last}: {e}" for e in breaking_changes(old, current[name])]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="git ref of the release (default: last release tag, else main)")
    parser.add_argument("--repo", type=Path, default=SCHEMA_DIR.parents[2], help="repository root")
    args = parser.parse_args(argv)
    ref = args.against or released_ref(args.repo)
    try:
        released = released_schemas(args.repo, ref, SCHEMA_DIR)
    except RuntimeError as exc:
        print(f"release gate: cannot read the released schemas at {ref!r}: {exc}", file=sys.stderr)
        return 2
    problems = check(released, current_schemas(SCHEMA_DIR))
    for problem in problems:
        print(f"NOT RELEASABLE: {problem}", file=sys.stderr)
    if not problems:
        print(f"release gate: {len(released)} released schemas at {ref} unchanged, new versions compatible")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
