"""Retention in analytics (issue 9), no I/O: the KPIs' records that last moved before the cutoff
are dropped, a replayed old event does not bring one back, a record still moving is kept, and
an unknown record type in CRM_RETENTION_DAYS stops the service at start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from analytics.domain.engine import AnalyticsState, apply, forget_records
from analytics.domain.records import expired
from analytics.settings import AnalyticsSettings
from crm_contracts import envelope_for
from crm_contracts.events.service_desk import TicketOpenedV1
from crm_contracts.registry import decode
from pydantic import ValidationError

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _apply(state: AnalyticsState, ticket_id: str, when: datetime) -> None:
    event = TicketOpenedV1(ticket_id=ticket_id, account_id="acc-1", priority="high", assignee="rep-1")
    env = envelope_for(event, source="service-desk", correlation_id="c", occurred_at=when)
    apply(state, env, decode(env))


def test_records_that_last_moved_before_the_cutoff_are_dropped_and_stay_dropped() -> None:
    state = AnalyticsState()
    _apply(state, "old", NOW - timedelta(days=40))
    _apply(state, "young", NOW - timedelta(days=5))
    assert {"ticket:old", "ticket:young"} <= set(state.records)
    cutoff = (NOW - timedelta(days=30)).timestamp()
    assert expired(state.records, cutoff) == ["ticket:old"]
    version = state.records_version
    assert forget_records(state, cutoff) == 1
    assert "ticket:old" not in state.records
    assert "ticket:young" in state.records
    assert state.records_version == version + 1  # the KPIs are computed again
    _apply(state, "old", NOW - timedelta(days=40))  # the reconciler replays the log
    assert "ticket:old" not in state.records
    _apply(state, "new", NOW)
    assert "ticket:new" in state.records
    assert forget_records(state, cutoff) == 0


def test_only_known_record_types_are_accepted() -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "MONGODB_URI": "mongodb://127.0.0.1:9"}
    assert AnalyticsSettings.model_validate(
        {**base, "CRM_RETENTION_DAYS": '{"record": 400}'}
    ).retention_days == {"record": 400}
    with pytest.raises(ValidationError, match="unknown record types"):
        AnalyticsSettings.model_validate({**base, "CRM_RETENTION_DAYS": '{"lead": 30}'})
