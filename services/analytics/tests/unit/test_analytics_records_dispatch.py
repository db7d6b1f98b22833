"""``records.changes`` asks only the changers an event's class can match (a lookup by class, not
a chain of pydantic ``isinstance`` checks per event): each changer's declared classes must cover
every class its own code tests an event against."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from analytics.domain import records
from crm_contracts import ALL_EVENTS


def _tested_classes(changer: Any) -> list[type]:
    """Every class (or tuple / union of classes) ``changer`` passes to ``isinstance(event, ...)``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(changer)))
    scope = vars(records)
    found: list[type] = []

    def resolve(node: ast.expr) -> None:
        if isinstance(node, ast.BinOp):  # A | B
            resolve(node.left)
            resolve(node.right)
        elif isinstance(node, ast.Tuple):
            for element in node.elts:
                resolve(element)
        elif isinstance(node, ast.Name):
            value = scope[node.id]
            found.extend(value if isinstance(value, tuple) else [value])
        else:  # pragma: no cover - a shape this test does not read yet
            raise AssertionError(f"cannot read {ast.dump(node)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            assert isinstance(node.args[0], ast.Name)
            assert node.args[0].id == "event"
            resolve(node.args[1])
    return found


def test_each_changer_declares_every_class_its_code_tests() -> None:
    assert [changer for changer, _ in records.CHANGERS] == [
        records._service,
        records._voice,
        records._handoffs,
        records._cs_acts,
        records._custom,
    ]
    for changer, declared in records.CHANGERS:
        tested = _tested_classes(changer)
        assert tested, changer.__name__
        missing = [cls.__name__ for cls in tested if not issubclass(cls, declared)]
        assert not missing, f"{changer.__name__} tests {missing} but does not declare them"


def test_every_contract_class_gets_the_changers_the_chains_would_ask() -> None:
    """Per event class: the changers asked are exactly those one of whose tested classes it is."""
    for event_class in ALL_EVENTS:
        asked = [c for c, declared in records.CHANGERS if issubclass(event_class, declared)]
        could = [
            c for c, _ in records.CHANGERS if any(issubclass(event_class, t) for t in _tested_classes(c))
        ]
        assert asked == could, event_class.__name__
