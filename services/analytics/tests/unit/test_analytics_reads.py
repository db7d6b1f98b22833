"""The event types the worker reads (analytics.domain.reads): no fold's type is ever skipped."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

import analytics.worker as worker_module
from analytics.domain import engine, reads, records
from analytics.domain.reads import FOLDED_CLASSES, READ_EVENT_TYPES
from crm_contracts.registry import ALL_EVENTS


def classes_tested_against_event(module: ModuleType) -> set[type]:
    """Every class an ``isinstance(event, ...)`` of ``module`` names (tuples and unions expanded)."""
    found: set[type] = set()

    def expand(value: object) -> None:
        if isinstance(value, type):
            found.add(value)
        elif isinstance(value, tuple):
            for item in value:
                expand(item)
        elif hasattr(value, "__args__"):  # A | B
            for item in value.__args__:
                expand(item)

    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "event"
        ):
            expand(eval(compile(ast.Expression(node.args[1]), module.__name__, "eval"), vars(module)))
    return found


def test_every_class_a_fold_tests_an_event_against_is_read() -> None:
    folded = set().union(*(classes_tested_against_event(m) for m in (engine, records, worker_module)))
    assert len(folded) > 25  # the walk found the folds' checks
    missing = {c.__name__ for c in folded if not issubclass(c, FOLDED_CLASSES)}
    assert not missing, f"folded but skipped by analytics.domain.reads: {missing}"
    assert {e.event_type for e in ALL_EVENTS if issubclass(e, tuple(folded))} <= READ_EVENT_TYPES


def test_the_types_nobody_here_folds_are_skipped() -> None:
    assert "lead.behaviour_recorded" not in READ_EVENT_TYPES
    assert "sales.lead_assigned" not in READ_EVENT_TYPES
    assert {"lead.captured", "lead.qualified", "handoff.received", "ticket.opened"} <= READ_EVENT_TYPES
    assert reads.__doc__
