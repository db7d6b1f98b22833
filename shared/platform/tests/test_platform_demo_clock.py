"""The demo clock (crm_platform.clock) and the demo history's plan (devinfra.demo_plan), no I/O.

The clock lets ``make run``'s history be created by the real handlers at past moments: only
when a service is started with ``CRM_DEMO_CLOCK=true`` (never in production), only for the
request or consumed event that carries the time, and the events emitted meanwhile carry it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from crm_contracts import utcnow
from crm_platform import clock as clock_module
from crm_platform.app import create_app
from crm_platform.clock import (
    DEMO_TIME_HEADER,
    demo_effect_time,
    parse_demo_time,
    simulated,
    simulated_now,
    system_clock,
)
from crm_platform.devinfra.demo_plan import AccountPlan, Renewal, plan_history
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers
from fastapi import APIRouter
from pydantic import ValidationError

router = APIRouter()


@router.get("/now")
async def now() -> dict[str, str]:
    return {"now": system_clock().isoformat()}


def _settings(**env: str) -> ServiceSettings:
    base = {"CRM_SERVICE_NAME": "clock-test", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    return ServiceSettings.model_validate({**base, "MONGODB_URI": "mongodb://127.0.0.1:1", **env})


async def _client(demo_clock: bool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings=_settings(CRM_DEMO_CLOCK=str(demo_clock).lower()),
        title="t",
        runtime=None,
        protected=[router],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


@pytest.fixture
async def demo() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(True):
        yield c


@pytest.fixture
async def live() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(False):
        yield c


AUTH = auth_headers(["admin"])
PAST = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)


async def test_a_request_runs_at_the_demo_time_it_names(demo: httpx.AsyncClient) -> None:
    r = await demo.get("/now", headers={**AUTH, DEMO_TIME_HEADER: PAST.isoformat()})
    assert r.status_code == 200
    assert r.json()["now"] == PAST.isoformat()
    plain = datetime.fromisoformat((await demo.get("/now", headers=AUTH)).json()["now"])
    assert abs((plain - utcnow()).total_seconds()) < 60


async def test_without_the_setting_the_header_changes_nothing(live: httpx.AsyncClient) -> None:
    r = await live.get("/now", headers={**AUTH, DEMO_TIME_HEADER: PAST.isoformat()})
    assert abs((datetime.fromisoformat(r.json()["now"]) - utcnow()).total_seconds()) < 60


@pytest.mark.parametrize(
    ("value", "says"),
    [("yesterday", "RFC 3339"), ("2026-01-15T09:30:00", "zone"), ("2199-01-01T00:00:00Z", "future")],
)
async def test_a_bad_demo_time_is_a_422_naming_the_header(
    demo: httpx.AsyncClient, value: str, says: str
) -> None:
    r = await demo.get("/now", headers={**AUTH, DEMO_TIME_HEADER: value})
    assert r.status_code == 422
    assert r.json()["fields"][0]["field"] == f"header.{DEMO_TIME_HEADER}"
    assert says in r.json()["message"]


def test_a_demo_time_older_than_the_events_may_be_is_refused() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="older than"):
        parse_demo_time((now - timedelta(days=800)).isoformat(), now)
    assert parse_demo_time("2025-12-05T10:00:00+01:00", now) == datetime(2025, 12, 5, 9, tzinfo=UTC)


def test_production_refuses_the_demo_clock() -> None:
    with pytest.raises(ValidationError, match="CRM_DEMO_CLOCK"):
        _settings(CRM_DEMO_CLOCK="true", CRM_ENV="production", CRM_JWT_PUBLIC_KEYS_FILE="/nonexistent")


def test_simulated_holds_only_inside_its_block() -> None:
    assert simulated_now() is None
    with simulated(PAST):
        assert system_clock() == PAST
        assert simulated_now() == PAST
    assert simulated_now() is None


def test_the_real_time_inside_a_simulation_and_nothing_to_set_outside_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every consumed record without a demo time asks for the real time: with none simulated
    # there is nothing to set, so no context variable is touched (a generator-based context per
    # record before: docs/performance.md, nineteenth session, drainsales).
    with simulated(PAST), simulated(None):
        assert simulated_now() is None, "the real time inside a simulation"
        assert system_clock() != PAST
    with simulated(PAST), simulated(None):
        pass
    assert simulated_now() is None

    def refused(*args: object) -> None:
        raise AssertionError("the simulated time set with nothing to set")

    monkeypatch.setattr(clock_module, "_simulated", _Refusing(refused))
    with simulated(None):
        assert system_clock() - utcnow() < timedelta(seconds=5)


class _Refusing:
    """A context variable holding nothing that refuses to be set."""

    def __init__(self, refused: object) -> None:
        self.set = refused

    def get(self) -> None:
        return None


def test_a_consumed_event_takes_effect_at_its_own_time_plus_the_real_transport() -> None:
    now = datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC)
    published = now - timedelta(seconds=2)
    assert demo_effect_time(PAST, published, now) == PAST + timedelta(seconds=2)
    # A live event (occurred just before its publish) takes effect now, never later.
    assert demo_effect_time(now - timedelta(seconds=3), published, now) == now - timedelta(seconds=1)
    assert demo_effect_time(now, now + timedelta(seconds=5), now) == now
    assert demo_effect_time(PAST, None, now) == PAST


# --- the plan ------------------------------------------------------------------------------------

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def test_the_plan_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    a, b = plan_history(7, 40, NOW), plan_history(7, 40, NOW)
    assert [(x.won_at, x.value, x.renewals) for x in a.accounts] == [
        (x.won_at, x.value, x.renewals) for x in b.accounts
    ]
    assert [x.won_at for x in plan_history(8, 40, NOW).accounts] != [x.won_at for x in a.accounts]


def test_the_plan_covers_a_year_with_every_kind_of_record_and_some_churn() -> None:
    plan = plan_history(1205, 300, NOW)
    accounts = plan.accounts
    year_ago = NOW - timedelta(days=365)
    assert sum(1 for a in accounts if a.won_at < year_ago) > 100  # renewals due within the year
    outcomes = [r.outcome for a in accounts for r in a.renewals if r.recorded_at is not None]
    assert {"renewed", "downgraded", "churned"} <= set(outcomes)
    assert 0.1 <= outcomes.count("churned") / len(outcomes) <= 0.25  # a realistic share churns
    assert all(t.resolved_at < NOW for a in accounts for t in a.tickets)
    assert {i.department for a in accounts for i in a.items} == {"sales", "marketing", "customer-success"}
    assert all(c.held_at < NOW for a in accounts for c in a.checkins)
    assert sum(1 for a in accounts for n in a.nps if n.score is not None) > 100
    assert any(a.needs_review for a in accounts)
    assert any(a.flag for a in accounts)
    for a in accounts:  # nothing happens to an account after it churned
        if a.churned_at is not None:
            assert all(t.opened_at < a.churned_at for t in a.tickets)


def test_churn_is_driven_by_a_hidden_risk_with_noise_not_by_the_warning_rule() -> None:
    plan = plan_history(1205, 300, NOW)
    recorded = [(a, r) for a in plan.accounts for r in a.renewals if r.recorded_at is not None]
    churned = [(a, r) for a, r in recorded if r.outcome == "churned"]
    kept = [(a, r) for a, r in recorded if r.outcome != "churned"]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    assert mean([a.risk for a, _ in churned]) > mean([a.risk for a, _ in kept]) + 0.1  # risk matters...

    def detractor(a: AccountPlan) -> bool:
        return any(n.score is not None and n.score <= 6 for n in a.nps)

    # ...but not alone: some churners never answered as detractors, some detractors renewed,
    # and some churn came from outside (a closed business, a cut budget).
    assert any(not detractor(a) for a, _ in churned)
    assert any(detractor(a) for a, _ in kept)
    assert {r.churn_reason for _, r in churned} & {"business_closed", "budget_cut"}

    # Recorded late as often whatever the outcome: overdue_renewal is no hidden hint.
    def late(group: list[tuple[AccountPlan, Renewal]]) -> float:
        return mean([float(r.recorded_at is not None and r.recorded_at > r.due_at) for _, r in group])

    assert abs(late(churned) - late(kept)) < 0.2
