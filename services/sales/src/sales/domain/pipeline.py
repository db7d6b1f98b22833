"""The sales pipeline: ordered stages, their required fields and win probabilities.

Rules (all pure, no I/O):

- a pipeline is one or more *open* stages followed by the two *closed* stages
  ``won`` and ``lost`` (in either order); a new opportunity starts in the first stage;
- ``won`` must require at least ``amount``, ``products`` and ``commitments`` (the
  ``deal.won`` handoff carries them) and ``lost`` at least ``lost_reason``;
- moving an opportunity into a stage merges the given fields over the ones it
  already has; any required field of the target stage still missing refuses the
  move (422, listing them); a field is present when it is not ``None`` and not a
  blank string (an empty list counts: ``commitments: []`` says "we promised nothing");
- nothing moves out of ``won`` or ``lost`` (409), and moving into the stage the
  opportunity is already in is refused (409): it is not a stage change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crm_platform.errors import Conflict, RuleViolation

WON = "won"
LOST = "lost"
CLOSED_STAGES = frozenset({WON, LOST})

# What the closed stages must require whatever the manager configures: the
# handoffs they trigger cannot be built without them.
WON_MUST_REQUIRE = ("amount", "products", "commitments")
LOST_MUST_REQUIRE = ("lost_reason",)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_STAGES = 20
MAX_REQUIRED_FIELDS = 20


@dataclass(frozen=True)
class Stage:
    name: str
    probability: float
    required_fields: tuple[str, ...] = ()

    @property
    def closed(self) -> bool:
        return self.name in CLOSED_STAGES


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    version: int = 1

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def first(self) -> Stage:
        return self.stages[0]

    def stage(self, name: str) -> Stage | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None

    def probability(self, name: str) -> float:
        s = self.stage(name)
        return s.probability if s is not None else 0.0


DEFAULT_PIPELINE = Pipeline(
    stages=(
        Stage("qualification", 0.1),
        Stage("discovery", 0.2, ("budget", "decision_maker")),
        Stage("proposal", 0.5, ("amount", "products")),
        Stage("negotiation", 0.7, ("close_date",)),
        Stage(WON, 1.0, ("amount", "products", "commitments")),
        Stage(LOST, 0.0, ("lost_reason",)),
    ),
    version=1,
)


def pipeline_problems(stages: Sequence[Stage]) -> list[str]:
    """Everything wrong with a proposed pipeline; empty when it is valid."""
    if not stages:
        return ["a pipeline needs at least one open stage, then 'won' and 'lost'"]
    problems = [f"at most {MAX_STAGES} stages"] if len(stages) > MAX_STAGES else []
    problems += _name_problems([s.name for s in stages])
    problems += _order_problems(stages)
    for stage in stages:
        problems += _stage_problems(stage)
    return problems


def _name_problems(names: list[str]) -> list[str]:
    """Stage names: their form, each once, and the two closed stages present."""
    problems = [
        f"stage name {name!r} must be lower-case letters, digits and '_' (max 40), starting with a letter"
        for name in names
        if not NAME_PATTERN.match(name)
    ]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate stage names: {duplicates}")
    problems += [
        f"the pipeline must contain the closed stage {required!r}"
        for required in (WON, LOST)
        if required not in names
    ]
    return problems


def _order_problems(stages: Sequence[Stage]) -> list[str]:
    """At least one open stage, and every open stage before the closed ones."""
    problems = []
    if all(s.closed for s in stages):
        problems.append("the pipeline needs at least one open stage before 'won' and 'lost'")
    first_closed = next((i for i, s in enumerate(stages) if s.closed), len(stages))
    if any(not s.closed for s in stages[first_closed:]):
        problems.append("'won' and 'lost' must come after every open stage")
    return problems


def _stage_problems(s: Stage) -> list[str]:
    """One stage's probability and required fields (won and lost require what their handoffs need)."""
    problems = []
    if not 0.0 <= s.probability <= 1.0:
        problems.append(f"stage {s.name!r}: probability must be between 0 and 1")
    if len(s.required_fields) > MAX_REQUIRED_FIELDS:
        problems.append(f"stage {s.name!r}: at most {MAX_REQUIRED_FIELDS} required fields")
    problems += [
        f"stage {s.name!r}: field name {f!r} is not a valid field name"
        for f in s.required_fields
        if not NAME_PATTERN.match(f)
    ]
    if len(set(s.required_fields)) != len(s.required_fields):
        problems.append(f"stage {s.name!r}: a required field is listed twice")
    must = WON_MUST_REQUIRE if s.name == WON else LOST_MUST_REQUIRE if s.name == LOST else ()
    absent = [f for f in must if f not in s.required_fields]
    if absent:
        problems.append(f"stage {s.name!r} must require {absent} (its handoff needs them)")
    return problems


def build_pipeline(stages: Sequence[Stage], version: int) -> Pipeline:
    """A validated pipeline; raises :class:`RuleViolation` listing every problem."""
    problems = pipeline_problems(stages)
    if problems:
        raise RuleViolation("invalid pipeline: " + "; ".join(problems), problems=problems)
    return Pipeline(tuple(stages), version)


def removed_stages(old: Pipeline, new: Pipeline) -> list[str]:
    kept = set(new.names)
    return [n for n in old.names if n not in kept]


def is_present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return True


def missing_fields(required: Iterable[str], values: Mapping[str, object]) -> list[str]:
    """The required fields absent from ``values``, in the stage's order."""
    return [f for f in required if not is_present(values.get(f))]


def is_closed(stage_name: str) -> bool:
    return stage_name in CLOSED_STAGES


def check_stage_move(
    pipeline: Pipeline,
    current_stage: str,
    target_stage: str,
    current_fields: Mapping[str, object],
    new_fields: Mapping[str, object],
) -> dict[str, object]:
    """Validate a move and return the opportunity's fields after it (merged).

    Raises :class:`Conflict` (409) when the opportunity is closed or already in
    the stage, :class:`RuleViolation` (422) for an unknown stage or missing fields.
    """
    if is_closed(current_stage):
        raise Conflict(
            f"the opportunity is {current_stage}: a closed opportunity does not move",
            stage=current_stage,
        )
    target = pipeline.stage(target_stage)
    if target is None:
        raise RuleViolation(f"unknown stage {target_stage!r}", stage=target_stage, stages=pipeline.names)
    if target.name == current_stage:
        raise Conflict(f"the opportunity is already in stage {current_stage!r}", stage=current_stage)
    merged = {**current_fields, **new_fields}
    missing = missing_fields(target.required_fields, merged)
    if missing:
        raise RuleViolation(
            f"stage {target.name!r} requires {', '.join(missing)}",
            stage=target.name,
            missing=missing,
        )
    return merged
