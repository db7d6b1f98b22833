"""JSON Schema files generated from the event models, checked in under ``schemas/``.

``python -m crm_contracts.schemas --write`` regenerates them; the contract tests
fail when a checked-in file differs from what the models generate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crm_contracts.base import Event
from crm_contracts.registry import ALL_EVENTS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def schema_filename(event: type[Event]) -> str:
    return f"{event.event_type}.v{event.version}.json"


def generate(event: type[Event]) -> dict[str, Any]:
    schema = event.model_json_schema(mode="validation")
    schema["$id"] = f"urn:crm:event:{event.event_type}:v{event.version}"
    schema["x-event-type"] = event.event_type
    schema["x-schema-version"] = event.version
    schema["x-topic"] = event.topic
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, different, or no longer generated."""
    expected = {schema_filename(e): render(generate(e)) for e in ALL_EVENTS}
    problems = []
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text() != text:
            problems.append(f"{name}: differs from the model")
    for path in directory.glob("*.json"):
        if path.name not in expected:
            problems.append(f"{path.name}: no model generates it")
    return sorted(problems)


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event in ALL_EVENTS:
        path = directory / schema_filename(event)
        path.write_text(render(generate(event)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate the checked-in files")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    problems = stale_files()
    for p in problems:
        print(f"stale schema: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
