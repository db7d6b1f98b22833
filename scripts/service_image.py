"""One service's image inputs: its own lock file and a build context of only shared/ and itself.

    python scripts/service_image.py locks [--check]          # services/<svc>/requirements.lock
    python scripts/service_image.py context SVC --out DIR    # the build context, then:
    docker build -f DIR/services/SVC/Dockerfile -t registry.example.com/crm/SVC:TAG DIR
    python scripts/service_image.py digest SVC               # sha256 of what the context holds

Dependencies are resolved once for the workspace (``uv.lock``: the shared libraries agree in
every service). Each service's image installs only its own closure, from
``services/<svc>/requirements.lock``: ``uv export --package <svc>`` of that lock, exact
versions with hashes, the workspace members left out (they are installed from the context).
The context holds ``shared/contracts``, ``shared/platform`` and ``services/<svc>`` (without
tests and caches), nothing else: no other service, not even ``uv.lock``. So a dependency
added to one service changes ``uv.lock`` and that service's lock, and no byte of another
service's context, unless it moves a version the other one uses too (then that one's lock
changes, as it must). ``make test`` checks that the locks are fresh and that the contexts
are isolated (``tests/contract/test_service_images.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("shared/contracts", "shared/platform")
LOCK = "requirements.lock"
SKIP_DIRS = frozenset(
    {"tests", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", ".local"}
)
SKIP_SUFFIXES = (".pyc", ".pyo", ".log")


def services(root: Path = ROOT) -> list[str]:
    return sorted(p.parent.name for p in (root / "services").glob("*/pyproject.toml"))


def uv() -> str:
    local = ROOT / ".local" / "tools" / "bin" / "uv"
    return str(local) if local.exists() else (shutil.which("uv") or "uv")


def lock_text(service: str) -> str:
    """The service's closure from uv.lock: exact versions with hashes, no workspace members."""
    command = [
        uv(), "export", "--frozen", "--quiet", "--package", service, "--no-dev", "--no-emit-workspace",
        "--no-header", "--no-annotate", "--format", "requirements.txt",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    header = f"# {service}'s dependencies, exported from uv.lock: python scripts/service_image.py locks\n"
    return header + done.stdout


def context_files(root: Path, service: str) -> list[Path]:
    """Every file of the service's build context, relative to ``root``, sorted."""
    found: list[Path] = []
    for top in (*SHARED, f"services/{service}"):
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
            found.extend(
                (Path(dirpath) / name).relative_to(root)
                for name in filenames
                if not name.endswith(SKIP_SUFFIXES)
            )
    return sorted(found)


def digest(root: Path, service: str) -> str:
    """sha256 over the context's paths and bytes: equal digests, equal build inputs."""
    h = hashlib.sha256()
    for rel in context_files(root, service):
        h.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def build_context(root: Path, service: str, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    for rel in context_files(root, service):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, out / rel)


def check_locks(write: bool) -> list[str]:
    """The services whose checked-in lock differs from uv.lock's export (written when ``write``)."""
    stale = []
    for service in services():
        path = ROOT / "services" / service / LOCK
        text = lock_text(service)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(service)
            if write:
                path.write_text(text, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    locks = commands.add_parser("locks", help="write services/<svc>/requirements.lock from uv.lock")
    locks.add_argument("--check", action="store_true", help="only report stale locks (exit 1)")
    context = commands.add_parser("context", help="the build context of one service")
    context.add_argument("service")
    context.add_argument("--out", type=Path, required=True)
    one = commands.add_parser("digest", help="sha256 of one service's build context")
    one.add_argument("service")
    args = parser.parse_args(argv)
    if args.command == "locks":
        stale = check_locks(write=not args.check)
        if stale and args.check:
            print(f"stale: {', '.join(stale)} (python scripts/service_image.py locks)", file=sys.stderr)
            return 1
        return 0
    if args.service not in services():
        parser.error(f"unknown service {args.service}; one of {', '.join(services())}")
    if args.command == "context":
        build_context(ROOT, args.service, args.out)
        print(args.out)
    else:
        print(digest(ROOT, args.service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
