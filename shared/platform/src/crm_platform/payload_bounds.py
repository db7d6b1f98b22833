"""Which event models bound the payloads they validate: the dead-letter walk's verdict in a few places.

:func:`crm_platform.dead_letters.classify` walks every parsed record for two things the JSON
parser lets through: nesting deeper than ``MAX_DEPTH`` and a number out of range (``1e400`` is
read as an infinite double; a JSON-mode parse also reads ``NaN`` and ``Infinity``). Visiting every
value of every record was 5% of the analytics worker's replay (docs/performance.md, sixteenth
session). For most event models the walk can only fail in a few known places once the model has
validated the payload:

- every field takes scalars (strings, integers, floats, booleans, enums, literals, UUIDs,
  e-mails, timestamps), nested models of the same kind with extra fields forbidden, and lists and
  dicts of those: a validated payload then has the model's shape, so its depth is the model's,
  fixed and known here;
- no validator runs before a field's own (``BeforeValidator``, ``WrapValidator``,
  ``PlainValidator``, ``mode="before"``/``"wrap"`` decorators: one could accept any shape), except
  the contracts' RFC 3339 check on timestamps, which lets only strings and datetimes through;
- of those scalars only a float field accepts a non-finite double (the others refuse one);
- no field is read under an alias (the raw key would not be the field's name).

:func:`finite_check` answers, for such a model, a function over the raw payload (the validated
one's source) that is true when every value in its float places is finite; for any other model
(an open map such as the custom fields' extension values, a recursive model, a validator before a
field's own) it answers None and the caller walks the payload as before. The check is only sound
for a payload the model has just validated.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import types
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from crm_contracts.email import EmailStr
from crm_contracts.envelope import Timestamp
from pydantic import AwareDatetime, BaseModel, BeforeValidator, PlainValidator, WrapValidator

Check = Callable[[Any], bool]

_SCALARS: frozenset[Any] = frozenset(
    (str, int, bool, types.NoneType, uuid.UUID, EmailStr, dt.datetime, dt.date, AwareDatetime)
)
# Validators that run before a field's own and are known to let only scalars through.
_SAFE_BEFORE = frozenset(m.func for m in get_args(Timestamp)[1:] if isinstance(m, BeforeValidator))
_checks: dict[type[BaseModel], tuple[int, Check | None] | None] = {}


class _Unbounded(Exception):
    """The model's validated payloads are not bounded in shape (module doc)."""


def finite_check(model: type[BaseModel], max_depth: int) -> Check | None:
    """For a bounded ``model`` whose payloads nest at most ``max_depth`` levels: a function of a
    raw payload the model validated, true when no float place of it holds a non-finite number
    (the walk's verdict); None when the model is not bounded (module doc) or nests deeper."""
    if model not in _checks:
        try:
            _checks[model] = _plan_model(model, frozenset())
        except _Unbounded:
            _checks[model] = None
    plan = _checks[model]
    if plan is None or plan[0] > max_depth:
        return None
    return plan[1] or _always


def depth_of(model: type[BaseModel]) -> int | None:
    """How many levels of objects and arrays a payload ``model`` validated can nest (the payload
    itself is one), or None when it is not bounded."""
    finite_check(model, 0)
    plan = _checks[model]
    return None if plan is None else plan[0]


def _always(_: Any) -> bool:
    return True


def _finite(value: Any) -> bool:
    return type(value) is not float or math.isfinite(value)


def _plan_model(model: type[BaseModel], seen: frozenset[type]) -> tuple[int, Check | None]:
    if model in seen or not _closed(model):
        raise _Unbounded(model)
    seen = seen | {model}
    depth, checks = 1, []
    for name, field in model.model_fields.items():
        if field.alias not in (None, name) or field.validation_alias not in (None, name):
            raise _Unbounded(model)
        inner_depth, check = _plan(field.annotation, field.metadata, seen)
        depth = max(depth, 1 + inner_depth)
        if check is not None:
            checks.append((name, check))
    if not checks:
        return depth, None
    places = tuple(checks)

    def check_model(value: Any) -> bool:
        if type(value) is not dict:
            return True  # not this model's shape: another member of a union took it
        return all(check(value[name]) for name, check in places if name in value)

    return depth, check_model


def _closed(model: type[BaseModel]) -> bool:
    """Extra fields forbidden, not a root model, no validator that runs before the fields' own."""
    if model.model_config.get("extra") != "forbid" or getattr(model, "__pydantic_root_model__", False):
        return False
    decorators = model.__pydantic_decorators__
    if decorators.validators or decorators.root_validators:  # pydantic v1 style: any mode
        return False
    if any(d.info.mode in ("before", "wrap", "plain") for d in decorators.field_validators.values()):
        return False
    return not any(d.info.mode in ("before", "wrap") for d in decorators.model_validators.values())


def _plan(
    annotation: Any, metadata: list[Any] | tuple[Any, ...], seen: frozenset[type]
) -> tuple[int, Check | None]:
    """(depth, check) of a field's type with its ``Annotated`` metadata."""
    if not all(map(_harmless, metadata)):
        raise _Unbounded(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is None:
        return _plan_plain(annotation, seen)
    if origin is Annotated:
        return _plan(args[0], args[1:], seen)
    if origin is Union or origin is types.UnionType:
        return _plan_union([_plan(arg, (), seen) for arg in args])
    if origin is Literal:
        if not all(type(a) in (str, int, bool, types.NoneType) for a in args):
            raise _Unbounded(annotation)
        return 0, None
    if origin is list:
        return _plan_container(_plan(args[0], (), seen), list, iter)
    if origin is dict:
        _plan(args[0], (), seen)  # keys: JSON's strings, validated as the key type
        return _plan_container(_plan(args[1], (), seen), dict, dict.values)
    raise _Unbounded(annotation)


def _harmless(item: Any) -> bool:
    """Metadata that cannot let another shape through: constraints, not validators before the
    field's own (but the timestamps' check) nor a schema of its own."""
    if isinstance(item, BeforeValidator) and item.func in _SAFE_BEFORE:
        return True
    if isinstance(item, BeforeValidator | WrapValidator | PlainValidator):
        return False
    return not hasattr(item, "__get_pydantic_core_schema__")


def _plan_plain(annotation: Any, seen: frozenset[type]) -> tuple[int, Check | None]:
    if annotation is float:
        return 0, _finite
    if annotation in _SCALARS or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return 0, None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _plan_model(annotation, seen)
    raise _Unbounded(annotation)


def _plan_union(plans: list[tuple[int, Check | None]]) -> tuple[int, Check | None]:
    depth = max(d for d, _ in plans)
    checks = tuple(c for _, c in plans if c is not None)
    if not checks:
        return depth, None
    return depth, checks[0] if len(checks) == 1 else (lambda value: all(c(value) for c in checks))


def _plan_container(
    inner: tuple[int, Check | None], kind: type, items: Callable[[Any], Any]
) -> tuple[int, Check | None]:
    depth, check = inner
    if check is None:
        return 1 + depth, None
    item_check = check
    return 1 + depth, lambda value: type(value) is not kind or all(item_check(v) for v in items(value))
