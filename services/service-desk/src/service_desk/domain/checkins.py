"""Check-ins: the cadence each tier gets, which check-ins are due or overdue, and a logged one.

Pure: the caller passes the account, the tier, identifiers and the current time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from crm_contracts.events.service_desk import CheckInLoggedV1, Sentiment
from crm_platform.errors import Conflict, RuleViolation

from service_desk.domain.accounts import Account, AccountStatus
from service_desk.domain.success_config import SuccessConfig, TierConfig

MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class CheckIn:
    """One check-in held with the customer (kept forever; notes stay in the desk)."""

    checkin_id: str
    account_id: str
    held_at: datetime
    attendees: list[str]
    sentiment: Sentiment
    notes: str | None = None
    due_at: datetime | None = None
    logged_by: str
    logged_at: datetime

    def logged(self, tier: str) -> CheckInLoggedV1:
        """``account.checkin_logged`` (the account's tier at the time)."""
        return CheckInLoggedV1(
            checkin_id=self.checkin_id,
            account_id=self.account_id,
            tier=tier,
            csm=self.logged_by,
            held_at=self.held_at,
            sentiment=self.sentiment,
            attendees=len(self.attendees),
            due_at=self.due_at,
        )


def checkin_due_at(account: Account, tier: TierConfig | None) -> datetime | None:
    """When the next check-in is due: the tier's cadence after the last one (or after the win)."""
    if tier is None or account.status != AccountStatus.ACTIVE:
        return None
    since = account.last_checkin_at or account.won_at
    return since + timedelta(days=tier.checkin_every_days)


def log_checkin(
    account: Account,
    tier: TierConfig | None,
    *,
    checkin_id: str,
    held_at: datetime,
    attendees: Sequence[str],
    sentiment: Sentiment,
    notes: str | None,
    by: str,
    now: datetime,
) -> CheckIn:
    """Record a check-in; the account remembers its latest one (a late entry of an older
    check-in changes nothing there)."""
    if account.status != AccountStatus.ACTIVE:
        raise Conflict(
            f"account {account.account_id} is {account.status.value}: no more check-ins",
            account_id=account.account_id,
        )
    if held_at > now + MAX_CLOCK_SKEW:
        raise RuleViolation(
            "a check-in is logged once it was held: held_at is in the future", field="held_at"
        )
    names = [a.strip() for a in attendees if a.strip()]
    if not names:
        raise RuleViolation("a check-in needs at least one attendee", field="attendees")
    checkin = CheckIn(
        checkin_id=checkin_id,
        account_id=account.account_id,
        held_at=held_at,
        attendees=names,
        sentiment=sentiment,
        notes=(notes or "").strip() or None,
        due_at=checkin_due_at(account, tier),
        logged_by=by,
        logged_at=now,
    )
    if account.last_checkin_at is None or held_at >= account.last_checkin_at:
        account.last_checkin_at, account.last_checkin_sentiment = held_at, sentiment
    return checkin


@dataclass(frozen=True)
class CheckInDue:
    account: Account
    csm: str | None
    due_at: datetime
    overdue: bool
    days_overdue: int


def checkins_due(
    accounts: Iterable[Account], config: SuccessConfig, *, now: datetime, horizon_days: int
) -> list[CheckInDue]:
    """Check-ins due within ``horizon_days`` and those overdue, most overdue first."""
    until = now + timedelta(days=horizon_days)
    out = []
    for account in accounts:
        due_at = checkin_due_at(account, config.tier(account.tier))
        if due_at is None or due_at > until:
            continue
        out.append(
            CheckInDue(
                account=account,
                csm=account.csm or account.account_manager,
                due_at=due_at,
                overdue=due_at < now,
                days_overdue=max(0, (now - due_at).days),
            )
        )
    return sorted(out, key=lambda d: d.due_at)


def per_csm(due: Iterable[CheckInDue]) -> dict[str, dict[str, int]]:
    """``{csm: {"due": n, "overdue": m}}`` (``"unassigned"`` for accounts without one)."""
    counts: dict[str, dict[str, int]] = {}
    for d in due:
        entry = counts.setdefault(d.csm or "unassigned", {"due": 0, "overdue": 0})
        entry["overdue" if d.overdue else "due"] += 1
    return counts
