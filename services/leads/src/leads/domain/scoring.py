"""Lead scoring: rules marketing can read and change, and the score they give.

A lead's score is the sum, over each behaviour, of ``weight x counted``, where
``counted`` is the number of occurrences capped by the behaviour's optional cap
(ten page views count, the eleventh does not). Crossing ``threshold`` qualifies
the lead. Rules are versioned: each change is a new version, never an edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from crm_contracts.events.common import Behaviour


class InvalidRules(ValueError):
    """A scoring rule set that must not be stored; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class BehaviourRule:
    weight: float
    cap: int | None = None  # None: every occurrence counts


@dataclass(frozen=True)
class RulesAuthor:
    user_id: str
    username: str


SYSTEM = RulesAuthor("system", "system")


@dataclass(frozen=True)
class ScoringRules:
    rules: Mapping[Behaviour, BehaviourRule]
    threshold: float
    version: int = 1
    changed_by: RulesAuthor = SYSTEM
    changed_at: datetime | None = None
    note: str | None = None

    def rule(self, behaviour: Behaviour) -> BehaviourRule:
        return self.rules.get(behaviour, BehaviourRule(0.0, None))


DEFAULT_RULES = ScoringRules(
    rules={
        Behaviour.PAGE_VIEW: BehaviourRule(5, 10),
        Behaviour.EMAIL_OPEN: BehaviourRule(3, 10),
        Behaviour.FORM_SUBMIT: BehaviourRule(20, None),
        Behaviour.TRIAL_SIGNUP: BehaviourRule(40, None),
    },
    threshold=60,
    version=1,
)


def validate_rules(rules: Mapping[Behaviour, BehaviourRule], threshold: float) -> None:
    """Raise :class:`InvalidRules` naming the first bad field; the API also checks these."""
    for behaviour in Behaviour:
        if behaviour not in rules:
            raise InvalidRules(f"rules.{behaviour.value}", "every behaviour needs a rule")
    for behaviour, rule in rules.items():
        if not rule.weight >= 0:  # also refuses NaN
            raise InvalidRules(f"rules.{behaviour.value}.weight", "must be >= 0")
        if rule.weight == float("inf"):
            raise InvalidRules(f"rules.{behaviour.value}.weight", "must be finite")
        if rule.cap is not None and rule.cap < 1:
            raise InvalidRules(f"rules.{behaviour.value}.cap", "must be >= 1 (omit it for no cap)")
    if not threshold > 0 or threshold == float("inf"):
        raise InvalidRules("threshold", "must be > 0 and finite")


def next_version(
    current: ScoringRules,
    rules: Mapping[Behaviour, BehaviourRule],
    threshold: float,
    *,
    author: RulesAuthor,
    at: datetime,
    note: str | None = None,
) -> ScoringRules:
    """The rule set that replaces ``current``: validated, one version higher."""
    validate_rules(rules, threshold)
    ordered = {b: rules[b] for b in Behaviour}
    return ScoringRules(
        rules=ordered,
        threshold=threshold,
        version=current.version + 1,
        changed_by=author,
        changed_at=at,
        note=note,
    )


@dataclass(frozen=True)
class Reason:
    """Why a lead has its score, for one behaviour."""

    behaviour: Behaviour
    count: int  # occurrences seen in this scoring cycle
    counted: int  # occurrences that score (after the cap)
    weight: float
    points: float


@dataclass(frozen=True)
class Score:
    total: float
    reasons: tuple[Reason, ...]
    rules_version: int
    threshold: float

    @property
    def qualifies(self) -> bool:
        return self.total >= self.threshold


def score(counts: Mapping[Behaviour, int], rules: ScoringRules) -> Score:
    """Score occurrence counts with a rule set; reasons list every behaviour seen."""
    reasons = []
    total = 0.0
    for behaviour in Behaviour:
        count = counts.get(behaviour, 0)
        if count <= 0:
            continue
        rule = rules.rule(behaviour)
        counted = count if rule.cap is None else min(count, rule.cap)
        points = float(rule.weight) * counted
        total += points
        reasons.append(Reason(behaviour, count, counted, float(rule.weight), points))
    return Score(round(total, 6), tuple(reasons), rules.version, float(rules.threshold))


@dataclass(frozen=True)
class Preview:
    """What a draft of the rules would do to the leads still being scored, before it is saved.

    ``leads``: the leads read (new, nurturing or recycled: the ones a score can still qualify),
    each with its counts of the current scoring cycle; of them, how many reach the threshold
    with the current rules and with the draft, how many only with the draft (``newly``: they
    qualify at their next behaviour once the draft is saved, since rules apply when a behaviour
    is scored), and how many would stop qualifying (``no_longer``).
    """

    leads: int
    qualify_current: int
    qualify_draft: int
    newly: int
    no_longer: int


def preview(cycles: Iterable[Mapping[Behaviour, int]], current: ScoringRules, draft: ScoringRules) -> Preview:
    """Score every lead's cycle counts with both rule sets (the one :func:`score`)."""
    leads = now = then = newly = gone = 0
    for counts in cycles:
        before, after = score(counts, current).qualifies, score(counts, draft).qualifies
        leads += 1
        now += before
        then += after
        newly += after and not before
        gone += before and not after
    return Preview(leads, now, then, newly, gone)
