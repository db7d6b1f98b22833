"""SLA countdowns in words ("due in 42 min", "overdue by 2 h 5 min")."""

from __future__ import annotations

from datetime import UTC, datetime

NONE = "\u2013"  # an en dash: no value


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def span(seconds: float) -> str:
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return "under a minute"


def countdown(due: str | None, now: datetime | None = None, *, done: bool = False) -> tuple[str, str]:
    """``(words, state)``; state is ``ok``, ``soon`` (under a quarter hour), ``overdue`` or ``done``."""
    when = parse_time(due)
    if done:
        return "done", "done"
    if when is None:
        return "no deadline", "ok"
    left = (when - (now or datetime.now(UTC))).total_seconds()
    if left < 0:
        return f"overdue by {span(left)}", "overdue"
    return f"due in {span(left)}", "soon" if left < 900 else "ok"


def short_time(value: str | None) -> str:
    when = parse_time(value)
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else NONE
