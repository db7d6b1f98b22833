"""The KPIs every department reviews, computed from the records at a moment (pure, no I/O).

``compute(records, now)`` reads every record once and returns one JSON document:

- ``periods``: for each period kind (``week``, ``month``, ``quarter``) the latest periods up to
  ``now``, each with its figures for ``all`` accounts and per team (the account's tier: the
  desk staffs its customer success teams by tier; ``unassigned`` until a tier is seen):
  tickets (first-response and resolution time p50/p90 per priority, resolution rate, SLA
  attainment), CSAT, NPS (promoters - detractors), renewals (renewal rate, logo churn, gross and
  net revenue retention per currency), check-in coverage, and action items per department
  (raised, closed, time to close);
- ``action_items``: open, overdue and escalated items per department, now;
- ``business_latency``: per handoff, handed off -> first human action of the receiver over the
  last hour, day and 30 days (items not acted on yet count by their age), pending items and the
  oldest one's age, and per UTC day of the last 90 the actions taken that day (``daily``);
- ``marketing``: per channel and per campaign, the leads captured, qualified, accepted and
  rejected, with sales' verdict reasons;
- ``custom_fields``: per record kind (``lead``, ...) and custom field key, from the records'
  latest extension map: a choice field's count per value; a number's or money's count and sum
  (money per currency); a date's count, earliest and latest.

Nothing in it names a person: teams are tiers, departments are departments. It depends on
``now`` (overdue items, the windows, the latest periods), so the worker recomputes it on a
timer rather than per event.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Union

from analytics.domain.records import ACT_PREFIX, CUSTOM_SLOT, Record, Slot

Json = Union[dict[str, "Json"], list["Json"], str, int, float, bool, None]  # noqa: UP007 - a recursive alias

PERIOD_KINDS: dict[str, int] = {"week": 13, "month": 12, "quarter": 4}  # kind -> periods kept
ALL_TEAMS = "all"
UNASSIGNED = "unassigned"
DEPARTMENTS: tuple[str, ...] = ("marketing", "sales", "customer-success")
CLOSED_STEPS: tuple[str, ...] = ("step_done", "step_declined")
# Sales' verdicts that hand work back to marketing (lead-verdict's business latency): a rejected
# lead's data or fit to look at, a recycled one to nurture again. An accepted lead is sales' own
# from then on: marketing owes it no step, so it is not an item waiting for marketing.
VERDICTS_FOR_MARKETING: tuple[str, ...] = ("rejected", "recycled")
WINDOWS: dict[str, float] = {"last_hour": 3600.0, "last_day": 86400.0, "last_30_days": 30 * 86400.0}
# The handoffs whose receiver takes a human step analytics can see (see business_samples).
BUSINESS_LATENCY_HANDOFFS: tuple[str, ...] = (
    "lead-qualified",
    "lead-verdict",
    "deal-won",
    "upsell-spotted",
    "commitment-flagged",
    "action-item-to-marketing",
    "action-item-to-sales",
    "commitment-review-requested",
    "commitment-review-completed",
    "action-item-outcome-from-marketing",
    "action-item-outcome-from-sales",
    "commitment-flag-outcome",
)


# -- small readers --------------------------------------------------------------------------


def _num(slot: Slot | None, name: str) -> float | None:
    value = None if slot is None else slot.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(slot: Slot | None, name: str) -> str | None:
    value = None if slot is None else slot.get(name)
    return value if isinstance(value, str) else None


def _at(slot: Slot | None) -> float | None:
    return _num(slot, "at")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


def stats(values: list[float]) -> dict[str, Json]:
    return {"count": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9)}


def ratio(part: int | float, whole: int | float) -> float | None:
    return round(part / whole, 4) if whole else None


# -- periods --------------------------------------------------------------------------------


def period_of(kind: str, moment: float) -> str:
    """``2026-W49``, ``2026-12`` or ``2026-Q4`` for an epoch time (UTC)."""
    day = datetime.fromtimestamp(moment, UTC)
    if kind == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "month":
        return f"{day.year}-{day.month:02d}"
    return f"{day.year}-Q{(day.month - 1) // 3 + 1}"


def period_start(kind: str, moment: float) -> datetime:
    day = datetime.fromtimestamp(moment, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    return day.replace(day=1, month=(day.month - 1) // 3 * 3 + 1)


def latest_periods(kind: str, now: float, count: int) -> list[tuple[str, float, float]]:
    """The ``count`` latest periods up to ``now``: (name, start, end) in epoch seconds, newest first."""
    out: list[tuple[str, float, float]] = []
    end = now
    for _ in range(count):
        start = period_start(kind, end).timestamp()
        next_start = _next_start(kind, start)
        out.append((period_of(kind, start), start, next_start))
        end = start - 1
    return out


def _next_start(kind: str, start: float) -> float:
    day = datetime.fromtimestamp(start, UTC)
    if kind == "week":
        return (day + timedelta(days=7)).timestamp()
    months = 1 if kind == "month" else 3
    month = day.month - 1 + months
    return day.replace(year=day.year + month // 12, month=month % 12 + 1).timestamp()


# -- accumulating one period and team --------------------------------------------------------


@dataclass
class Bucket:
    """What one (period, team) accumulates while the records are read."""

    opened: int = 0
    opened_resolved: int = 0
    resolved: int = 0
    within_sla: int = 0
    first_response: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    resolution: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    csat: list[int] = field(default_factory=list)
    nps: list[int] = field(default_factory=list)
    renewals: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    active_accounts: set[str] = field(default_factory=set)
    checked_in: set[str] = field(default_factory=set)
    raised: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    time_to_close: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def figures(self) -> dict[str, Json]:
        return {
            "tickets": self._tickets(),
            "csat": self._csat(),
            "nps": self._nps(),
            "renewals": self._renewals(),
            "checkins": {
                "active_accounts": len(self.active_accounts),
                "covered_accounts": len(self.checked_in & self.active_accounts),
                "coverage": ratio(len(self.checked_in & self.active_accounts), len(self.active_accounts)),
            },
            "action_items": {
                d: {
                    "raised": self.raised[d],
                    "closed": self.closed[d],
                    "time_to_close": stats(self.time_to_close[d]),
                }
                for d in DEPARTMENTS
            },
        }

    def _tickets(self) -> dict[str, Json]:
        return {
            "opened": self.opened,
            "resolved": self.resolved,
            "resolution_rate": ratio(self.opened_resolved, self.opened),
            "sla_attainment": ratio(self.within_sla, self.resolved),
            "first_response": {p: stats(v) for p, v in sorted(self.first_response.items())},
            "resolution": {p: stats(v) for p, v in sorted(self.resolution.items())},
        }

    def _csat(self) -> dict[str, Json]:
        satisfied = sum(1 for s in self.csat if s >= 4)
        average = round(sum(self.csat) / len(self.csat), 3) if self.csat else None
        return {
            "responses": len(self.csat),
            "average": average,
            "satisfied_share": ratio(satisfied, len(self.csat)),
        }

    def _nps(self) -> dict[str, Json]:
        promoters = sum(1 for s in self.nps if s >= 9)
        detractors = sum(1 for s in self.nps if s <= 6)
        score = round(100 * (promoters - detractors) / len(self.nps), 1) if self.nps else None
        return {"responses": len(self.nps), "promoters": promoters, "detractors": detractors, "score": score}

    def _renewals(self) -> dict[str, Json]:
        total = sum(self.renewals.values())
        kept = self.renewals["renewed"] + self.renewals["downgraded"]
        revenue: dict[str, Json] = {
            currency: {
                "previous": round(previous, 2),
                "gross_retention": ratio(retained, previous),
                "net_retention": ratio(net, previous),
            }
            for currency, (previous, retained, net) in sorted(self.revenue.items())
        }
        return {
            "recorded": total,
            "renewed": self.renewals["renewed"],
            "downgraded": self.renewals["downgraded"],
            "churned": self.renewals["churned"],
            "renewal_rate": ratio(kept, total),
            "logo_churn": ratio(self.renewals["churned"], total),
            "revenue_retention": revenue,
        }


class Periods:
    """The buckets of the latest periods of each kind, per team (and ``all``)."""

    def __init__(self, now: float) -> None:
        self.spans = {kind: latest_periods(kind, now, count) for kind, count in PERIOD_KINDS.items()}
        self.index = {
            kind: {name: (start, end) for name, start, end in spans} for kind, spans in self.spans.items()
        }
        self.buckets: dict[tuple[str, str, str], Bucket] = {}

    def at(self, moment: float | None, team: str) -> list[Bucket]:
        """The buckets (every kind; the team and ``all``) a moment falls in; none outside the periods."""
        if moment is None:
            return []
        out: list[Bucket] = []
        for kind, names in self.index.items():
            name = period_of(kind, moment)
            if name in names:
                out.extend(self._bucket(kind, name, t) for t in {team, ALL_TEAMS})
        return out

    def overlapping(self, start: float, end: float | None, team: str) -> list[Bucket]:
        """The buckets of every period that overlaps [start, end) (end None: still going)."""
        out: list[Bucket] = []
        for kind, names in self.index.items():
            for name, (p_start, p_end) in names.items():
                if start < p_end and (end is None or end >= p_start):
                    out.extend(self._bucket(kind, name, t) for t in {team, ALL_TEAMS})
        return out

    def _bucket(self, kind: str, name: str, team: str) -> Bucket:
        return self.buckets.setdefault((kind, name, team), Bucket())

    def document(self) -> dict[str, Json]:
        out: dict[str, Json] = {}
        for kind, spans in self.spans.items():
            rows: list[Json] = []
            for name, start, end in spans:
                teams = sorted({t for (k, n, t) in self.buckets if k == kind and n == name} | {ALL_TEAMS})
                rows.append(
                    {
                        "period": name,
                        "start": datetime.fromtimestamp(start, UTC).isoformat(),
                        "end": datetime.fromtimestamp(end, UTC).isoformat(),
                        "teams": {t: self.buckets.get((kind, name, t), Bucket()).figures() for t in teams},
                    }
                )
            out[kind] = rows
        return out


# -- the fold over the records ---------------------------------------------------------------


def _by_kind(records: Mapping[str, Record]) -> dict[str, dict[str, Record]]:
    out: dict[str, dict[str, Record]] = defaultdict(dict)
    for key, record in records.items():
        kind, _, ident = key.partition(":")
        out[kind][ident] = record
    return out


def _team(accounts: Mapping[str, Record], account_id: str | None) -> str:
    record = accounts.get(account_id or "")
    return _text(record.get("last_tier") if record else None, "tier") or UNASSIGNED


def _add_ticket(periods: Periods, ticket: Record, team: str) -> None:
    opened, resolved = ticket.get("opened"), ticket.get("resolved")
    priority = _text(opened, "priority") or "unknown"
    for bucket in periods.at(_at(opened), team):
        bucket.opened += 1
        bucket.opened_resolved += resolved is not None
    for bucket in periods.at(_at(resolved), team):
        bucket.resolved += 1
        bucket.within_sla += resolved is not None and not resolved.get("breached")
        if (first := _num(resolved, "first_response_seconds")) is not None:
            bucket.first_response[priority].append(first)
        if (took := _num(resolved, "resolution_seconds")) is not None:
            bucket.resolution[priority].append(took)


def _add_survey(periods: Periods, survey: Record, team: str) -> None:
    answered = survey.get("answered")
    score = _num(answered, "score")
    if score is None:
        return
    for bucket in periods.at(_at(answered), team):
        (bucket.nps if _text(answered, "kind") == "nps" else bucket.csat).append(int(score))


def _add_renewal(periods: Periods, renewal: Record, team: str) -> None:
    recorded = renewal.get("recorded")
    outcome, previous = _text(recorded, "outcome"), _num(recorded, "previous_value") or 0.0
    new = _num(recorded, "new_value") or 0.0
    # The period it was due in; one decided early counts when it was decided (a renewal recorded
    # months ahead of its date still moves this quarter's retention, not a quarter not yet shown).
    due, decided = _num(recorded, "due_at"), _at(recorded)
    moment = min(due, decided) if due is not None and decided is not None else due
    for bucket in periods.at(moment, team):
        bucket.renewals[outcome or "unknown"] += 1
        totals = bucket.revenue[_text(recorded, "currency") or "EUR"]
        totals[0] += previous
        totals[1] += min(previous, new)
        totals[2] += new


def _add_account(periods: Periods, account_id: str, account: Record, team: str) -> None:
    onboarded = _at(account.get("onboarded"))
    if onboarded is None:
        return
    for bucket in periods.overlapping(onboarded, _at(account.get("churned")), team):
        bucket.active_accounts.add(account_id)


def _add_item(periods: Periods, item: Record) -> None:
    raised = item.get("raised") or _first_step(item)
    department = _text(raised, "department") or "unknown"
    raised_at = _at(item.get("raised")) or _num(raised, "raised_at")
    for bucket in periods.at(raised_at, ALL_TEAMS):
        bucket.raised[department] += 1
    closed = _closed_at(item)
    for bucket in periods.at(closed, ALL_TEAMS):
        bucket.closed[department] += 1
        if raised_at is not None and closed is not None:
            bucket.time_to_close[department].append(max(0.0, closed - raised_at))


def _first_step(item: Record) -> Slot | None:
    steps = [slot for name, slot in item.items() if name.startswith("step_")]
    return min(steps, key=lambda s: _at(s) or 0.0) if steps else None


def _closed_at(item: Record) -> float | None:
    times = [t for name in CLOSED_STEPS if (t := _at(item.get(name))) is not None]
    return min(times) if times else None


def open_items(items: Mapping[str, Record], now: float) -> dict[str, Json]:
    """Open, overdue and escalated items per department, now."""
    out = {d: Counter[str]() for d in DEPARTMENTS}
    for item in items.values():
        if _closed_at(item) is not None:
            continue
        anchor = item.get("raised") or _first_step(item)
        counts = out.setdefault(_text(anchor, "department") or "unknown", Counter())
        counts["open"] += 1
        due = _num(anchor, "due_at")
        counts["overdue"] += due is not None and due < now
        counts["escalated"] += "step_escalated" in item
    return {d: {k: c[k] for k in ("open", "overdue", "escalated")} for d, c in out.items()}


@dataclass(frozen=True)
class Derived:
    """What the KPIs read from the records alone, whatever ``now`` is: the records by kind, the
    business latencies' samples, the marketing and custom-field figures. The worker keeps it
    while no record changes (:class:`DerivedCache`): its KPI timer recomputes only what moves
    with time, not a walk of every lead each tick (docs/performance.md, eleventh session, idle)."""

    kinds: dict[str, dict[str, Record]]
    samples: dict[str, list[Sample]]
    marketing: dict[str, Json]
    custom_fields: dict[str, Json]


def derive(records: Mapping[str, Record]) -> Derived:
    kinds = _by_kind(records)
    return Derived(kinds, business_samples(kinds), marketing(kinds.get("lead", {})), custom_fields(kinds))


class DerivedCache:
    """:func:`derive` of the records, kept while their ``version`` stands still.

    Kept from the walk on, and let go as soon as a record changes (:meth:`release`, called by
    the worker's fold): while records change, every tick derives anew anyway, and holding the
    last walk between ticks would add its size (megabytes at 30,000 leads) to the fold's own
    peak memory, the worker's peak RSS being at its bound. It used to be kept only once the
    version was the same at two ticks in a row, so the records were walked twice after the last
    change, the second walk often in the platform's idle window (docs/performance.md,
    eighteenth session, idle)."""

    def __init__(self) -> None:
        self._version: object = None
        self._derived: Derived | None = None

    def get(self, version: object, records: Callable[[], Mapping[str, Record]]) -> Derived:
        """The records' :class:`Derived`; ``records`` is called only when it is not kept."""
        if self._derived is not None and version == self._version:
            return self._derived
        self._derived = None
        self._derived = derive(records())
        self._version = version
        return self._derived

    def release(self, version: object) -> None:
        """A fold ran: let the walk go if the records' ``version`` moved since it."""
        if self._derived is not None and version != self._version:
            self._derived = None


def compute(records: Mapping[str, Record] | Derived, now: datetime) -> dict[str, Json]:
    """Every KPI at ``now`` (see the module's docstring), from the records or their :class:`Derived`."""
    moment = now.timestamp()
    derived = records if isinstance(records, Derived) else derive(records)
    kinds = derived.kinds
    accounts = kinds.get("account", {})
    periods = Periods(moment)
    for ticket in kinds.get("ticket", {}).values():
        _add_ticket(periods, ticket, _team(accounts, _text(_any(ticket, "opened", "resolved"), "account_id")))
    for survey in kinds.get("survey", {}).values():
        _add_survey(periods, survey, _team(accounts, _text(survey.get("answered"), "account_id")))
    for renewal in kinds.get("renewal", {}).values():
        _add_renewal(periods, renewal, _team(accounts, _text(renewal.get("recorded"), "account_id")))
    for checkin in kinds.get("checkin", {}).values():
        account_id = _text(checkin.get("held"), "account_id") or ""
        for bucket in periods.at(_at(checkin.get("held")), _team(accounts, account_id)):
            bucket.checked_in.add(account_id)
    for account_id, account in accounts.items():
        _add_account(periods, account_id, account, _team(accounts, account_id))
    for item in kinds.get("item", {}).values():
        _add_item(periods, item)
    return {
        "computed_at": now.astimezone(UTC).isoformat(),
        "periods": periods.document(),
        "action_items": open_items(kinds.get("item", {}), moment),
        "business_latency": business_latency(derived.samples, moment),
        "marketing": derived.marketing,
        "custom_fields": derived.custom_fields,
    }


def _any(record: Record, *names: str) -> Slot | None:
    return next((record[n] for n in names if n in record), None)


# -- business latency -------------------------------------------------------------------------

Sample = tuple[float, float | None]  # (handed off at, first human action at | None: not yet)


def business_samples(kinds: Mapping[str, Mapping[str, Record]]) -> dict[str, list[Sample]]:
    """Per handoff, (handed off, first human action of the receiver) pairs."""
    out: dict[str, list[Sample]] = {name: [] for name in BUSINESS_LATENCY_HANDOFFS}
    for lead_id, lead in kinds.get("lead", {}).items():
        if (start := _at(lead.get("qualified"))) is not None:
            out["lead-qualified"].append((start, _at(lead.get("verdict"))))
        _verdict_sample(out, lead_id, lead, kinds.get("leadacts", {}))
    for deal in kinds.get("deal", {}).values():
        if (start := _at(deal.get("won"))) is not None:
            out["deal-won"].append((start, _at(deal.get("first_step"))))
    for flag in kinds.get("flag", {}).values():
        if (start := _at(flag.get("flagged"))) is not None:
            answers = [t for name in ("acknowledged", "resolved") if (t := _at(flag.get(name))) is not None]
            out["commitment-flagged"].append((start, min(answers) if answers else None))
    for item in kinds.get("item", {}).values():
        _item_sample(out, item)
    _opportunity_samples(out, kinds)
    _outcome_samples(out, kinds)
    return out


def _outcome_samples(out: dict[str, list[Sample]], kinds: Mapping[str, Mapping[str, Record]]) -> None:
    """Outcomes handed back to customer success end at its next human step on the account
    (``csacts``: a check-in, onboarding step, ticket, renewal, signal, flag or action item):
    the item marketing or sales closed (done or declined), each answer of sales to a flag."""
    acts = {
        account_id: sorted(
            t for name, slot in record.items() if name.startswith(ACT_PREFIX) and (t := _at(slot))
        )
        for account_id, record in kinds.get("csacts", {}).items()
    }
    for item in kinds.get("item", {}).values():
        closing = [item[name] for name in CLOSED_STEPS if name in item and not item[name].get("automatic")]
        closed = min(closing, key=lambda slot: _at(slot) or 0.0) if closing else None
        department = _text(closed, "department")
        if closed is None or department not in ("marketing", "sales") or (start := _at(closed)) is None:
            continue
        after = _first_after(acts.get(_text(closed, "account_id") or "", []), start)
        out[f"action-item-outcome-from-{department}"].append((start, after))
    for flag in kinds.get("flag", {}).values():
        for answer in (flag.get("acknowledged"), flag.get("resolved")):
            if (start := _at(answer)) is not None and (account_id := _text(answer, "account_id")):
                out["commitment-flag-outcome"].append((start, _first_after(acts.get(account_id, []), start)))


def _verdict_sample(
    out: dict[str, list[Sample]], lead_id: str, lead: Record, leadacts: Mapping[str, Record]
) -> None:
    """lead-verdict: a rejected or recycled verdict -> marketing's first edit of the lead after it
    (``lead.edited``, a person changing the lead; capture merges, imports and behaviour are not
    marketing's hands on it)."""
    verdict = lead.get("verdict")
    if _text(verdict, "verdict") not in VERDICTS_FOR_MARKETING or (start := _at(verdict)) is None:
        return
    acts = [
        t
        for name, slot in leadacts.get(lead_id, {}).items()
        if name.startswith(ACT_PREFIX) and (t := _at(slot))
    ]
    out["lead-verdict"].append((start, _first_after(acts, start)))


def _item_sample(out: dict[str, list[Sample]], item: Record) -> None:
    raised = item.get("raised")
    department = _text(raised, "department")
    if department not in ("marketing", "sales") or (start := _at(raised)) is None:
        return
    human = [
        t
        for name, slot in item.items()
        if name.startswith("step_") and not slot.get("automatic") and (t := _at(slot)) is not None
    ]
    out[f"action-item-to-{department}"].append((start, min(human) if human else None))


def _opportunity_samples(out: dict[str, list[Sample]], kinds: Mapping[str, Mapping[str, Record]]) -> None:
    """Upsells and review verdicts end at sales' first step on the opportunity after them."""
    acts: dict[str, list[float]] = {}
    by_signal: dict[str, str] = {}
    for opp_id, opp in kinds.get("opp", {}).items():
        acts[opp_id] = sorted(
            t for name, slot in opp.items() if name.startswith(ACT_PREFIX) and (t := _at(slot)) is not None
        )
        if (signal_id := _text(opp.get("signal"), "signal_id")) is not None:
            by_signal[signal_id] = opp_id
    for signal_id, signal in kinds.get("signal", {}).items():
        if (start := _at(signal.get("spotted"))) is not None:
            out["upsell-spotted"].append(
                (start, _first_after(acts.get(by_signal.get(signal_id, ""), []), start))
            )
    for review in kinds.get("review", {}).values():
        requested, completed = _at(review.get("requested")), _at(review.get("completed"))
        if requested is not None:
            out["commitment-review-requested"].append((requested, completed))
        if completed is not None:
            deal_acts = acts.get(_text(review.get("completed"), "deal_id") or "", [])
            out["commitment-review-completed"].append((completed, _first_after(deal_acts, completed)))


def _first_after(times: Iterable[float], start: float) -> float | None:
    return next((t for t in sorted(times) if t >= start), None)


def window_stats(samples: list[Sample], now: float, seconds: float) -> dict[str, Json]:
    """Latencies of the actions taken in the window, plus every item still waiting, by its age."""
    values = [max(0.0, end - start) for start, end in samples if end is not None and end >= now - seconds]
    values += [max(0.0, now - start) for start, end in samples if end is None]
    return {**stats(values), "p99": percentile(values, 0.99)}


DAILY_DAYS = 90  # the days of business latency over time (the UTC day an action ended)


def daily_stats(samples: list[Sample], now: float, days: int = DAILY_DAYS) -> list[Json]:
    """Per UTC day of the last ``days`` (oldest first, days without an action left out): the
    latencies of the actions taken that day, count, p50 and p90. Waiting items are in no day."""
    first = math.floor(now / 86400) - days + 1
    by_day: dict[int, list[float]] = defaultdict(list)
    for start, end in samples:
        if end is not None and (day := math.floor(end / 86400)) >= first:
            by_day[day].append(max(0.0, end - start))
    return [
        {"day": (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).date().isoformat(), **stats(values)}
        for day, values in sorted(by_day.items())
    ]


def business_latency(by_handoff: Mapping[str, list[Sample]], now: float) -> dict[str, Json]:
    """Per handoff, from its :func:`business_samples`, at ``now``."""
    out: dict[str, Json] = {}
    for name, samples in by_handoff.items():
        pending = [now - start for start, end in samples if end is None]
        out[name] = {
            "windows": {w: window_stats(samples, now, seconds) for w, seconds in WINDOWS.items()},
            "pending": len(pending),
            "oldest_pending_seconds": round(max(pending), 3) if pending else None,
            "daily": daily_stats(samples, now),
        }
    return out


# -- marketing --------------------------------------------------------------------------------


def marketing(leads: Mapping[str, Record]) -> dict[str, Json]:
    """Per channel and per campaign: leads captured, qualified, accepted, rejected, and why."""
    channels: dict[str, Counter[str]] = defaultdict(Counter)
    campaigns: dict[str, Counter[str]] = defaultdict(Counter)
    for lead in leads.values():
        first = _any(lead, "captured", "qualified")
        for counts in (
            channels[_text(first, "channel") or "unknown"],
            campaigns[_text(first, "campaign") or "none"],
        ):
            _count_lead(counts, lead)
    return {"channels": _lead_figures(channels), "campaigns": _lead_figures(campaigns)}


def _count_lead(counts: Counter[str], lead: Record) -> None:
    counts["captured"] += "captured" in lead
    counts["qualified"] += "qualified" in lead
    verdict = lead.get("verdict")
    decided = _text(verdict, "verdict")
    if decided in ("accepted", "rejected", "recycled"):
        counts[decided] += 1
    if decided in ("rejected", "recycled"):
        counts[f"reason:{_text(verdict, 'reason') or 'unspecified'}"] += 1


def _lead_figures(groups: Mapping[str, Counter[str]]) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for name, counts in sorted(groups.items()):
        reasons: dict[str, Json] = {
            k.removeprefix("reason:"): v for k, v in sorted(counts.items()) if k.startswith("reason:")
        }
        figures: dict[str, Json] = {
            k: counts[k] for k in ("captured", "qualified", "accepted", "rejected", "recycled")
        }
        figures["acceptance_rate"] = ratio(
            counts["accepted"], counts["accepted"] + counts["rejected"] + counts["recycled"]
        )
        figures["verdict_reasons"] = reasons
        out[name] = figures
    return out


def custom_fields(kinds: Mapping[str, Mapping[str, Record]]) -> dict[str, Json]:
    """Per record kind and field key: the breakdown of the records' latest custom values."""
    out: dict[str, Json] = {}
    for kind, records in sorted(kinds.items()):
        fields: dict[str, dict[str, Json]] = {}
        for record in records.values():
            slot = record.get(CUSTOM_SLOT)
            for name, value in (slot or {}).items():
                kind_of, _, key = name.partition(":")
                if key and kind_of in ("choice", "number", "money", "date"):
                    _fold_custom(fields, kind_of, key, value, slot)
        if fields:
            out[kind] = dict(sorted(fields.items()))
    return out


def _fold_custom(
    fields: dict[str, dict[str, Json]], kind: str, key: str, value: object, slot: Slot | None
) -> None:
    figure = fields.setdefault(key, {"type": kind, "count": 0})
    if figure.get("type") != kind:  # retyped by an admin: values of another type are left out
        return
    count = figure["count"]
    figure["count"] = (count if isinstance(count, int) else 0) + 1
    if kind == "choice" and isinstance(value, str):
        values = figure.setdefault("values", {})
        if isinstance(values, dict):
            current = values.get(value, 0)
            values[value] = (current if isinstance(current, int) else 0) + 1
    elif kind == "number" and isinstance(value, int | float):
        total = figure.get("sum", 0)
        figure["sum"] = (total if isinstance(total, int | float) else 0) + value
    elif kind == "money" and isinstance(value, int | float):
        sums = figure.setdefault("sum_by_currency", {})
        currency = _text(slot, f"currency:{key}") or "unknown"
        if isinstance(sums, dict):
            current = sums.get(currency, 0)
            sums[currency] = round((current if isinstance(current, int | float) else 0) + value, 4)
    elif kind == "date" and isinstance(value, str):
        for bound, pick in (("earliest", min), ("latest", max)):
            seen = figure.get(bound)
            figure[bound] = pick(seen, value) if isinstance(seen, str) else value
