"""The "can I deploy" gate: is a new version of an event compatible with the old?

Rule: a new version may only *add optional fields*. Removing a field, changing
its type (including its enum values or nested shape), or making an optional field
required is breaking. Each violation names the field path, so the message says
exactly what to fix.

``python -m crm_contracts.compat OLD.json NEW.json`` checks two schema files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Schema = dict[str, Any]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every local ``$ref`` (our models are not recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _variants(node: Schema) -> list[Schema]:
    return list(node.get("anyOf") or node.get("oneOf") or [node])


def _describe(node: Schema) -> str:
    parts = []
    for v in _variants(node):
        if "enum" in v:
            parts.append("enum" + json.dumps(sorted(map(str, v["enum"]))))
        elif "const" in v:
            parts.append(f"const {v['const']!r}")
        elif v.get("type") == "array":
            parts.append(f"array[{_describe(v.get('items', {}))}]")
        elif v.get("type") == "object" and "properties" in v:
            parts.append("object")
        else:
            t = str(v.get("type", "any"))
            parts.append(t + (f"({v['format']})" if "format" in v else ""))
    return " | ".join(sorted(parts))


def _compare(old: Schema, new: Schema, path: str, errors: list[str]) -> None:
    if _describe(old) != _describe(new):
        errors.append(f"field '{path}' retyped: {_describe(old)} -> {_describe(new)}")
        return
    for o, n in zip(_variants(old), _variants(new), strict=False):
        if o.get("type") == "array":
            _compare(o.get("items", {}), n.get("items", {}), f"{path}[]", errors)
        elif "properties" in o:
            _compare_object(o, n, path, errors)


def _compare_object(old: Schema, new: Schema, prefix: str, errors: list[str]) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    for name, old_field in old_props.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in new_props:
            errors.append(f"field '{path}' removed")
            continue
        if name not in old_req and name in new_req:
            errors.append(f"field '{path}' changed from optional to required")
        _compare(old_field, new_props[name], path, errors)
    for name in new_props.keys() - old_props.keys():
        path = f"{prefix}.{name}" if prefix else name
        if name in new_req:
            errors.append(f"field '{path}' added as required (new fields must be optional)")


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Every reason ``new`` cannot replace ``old``; empty when compatible."""
    old_r = _resolve(old, old.get("$defs", {}))
    new_r = _resolve(new, new.get("$defs", {}))
    errors: list[str] = []
    _compare_object(old_r, new_r, "", errors)
    return errors


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print("usage: python -m crm_contracts.compat OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(a).read_text()) for a in args)
    errors = breaking_changes(old, new)
    for e in errors:
        print(f"BREAKING: {e}", file=sys.stderr)
    if not errors:
        print("compatible")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
