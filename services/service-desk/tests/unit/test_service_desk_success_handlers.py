"""The customer-success handlers the other unit suites do not walk, against the fakes (no I/O):
the success configuration, an account's check-ins and surveys, a survey behind its link, usage,
the rescore after a change elsewhere, one commitment review, the action-item account check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import DealWonV1, Product
from crm_contracts.events.service_desk import HealthScoredV1, Sentiment, SurveyKind
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.errors import NotFound
from crm_platform.uow import FakeUnitOfWork
from service_desk.domain import surveys
from service_desk.domain.accounts import Account, AccountStatus, Usage, account_from_deal
from service_desk.domain.success_config import SuccessConfig
from service_desk.fakes import FakeSuccessUnit
from service_desk.handlers import action_items, reviews
from service_desk.handlers import success as handlers

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ADMIN = Actor.of("u-admin", ["admin"])
CARLA = Actor.of("u-carla", ["customer_success_manager"])
DORA = Actor.of("u-dora", ["customer_success_manager"])
SECRET = b"unit-secret"
Uow = FakeUnitOfWork[FakeSuccessUnit]


def account(account_id: str = "acc-1", csm: str = "u-carla") -> Account:
    deal = DealWonV1(
        deal_id=f"deal-{account_id}",
        account_name="Acme GmbH",
        contacts=[Contact(name="Ada", email="ada@acme.example")],
        products=[Product(sku="CRM", name="CRM", quantity=1, unit_price=60000.0)],
        value=Money(amount=60000.0),
        commitments=[],
        sales_owner="u-sam",
        won_at=T0,
    )
    return account_from_deal(deal, account_id=account_id, csm=csm, checklist=["Kickoff"], now=T0)


def make_uow(*accounts: Account) -> Uow:
    unit = FakeSuccessUnit()
    for a in accounts:
        unit.accounts.items[a.account_id] = a
    return FakeUnitOfWork(unit, clock=ManualClock(T0 + timedelta(days=1)))


async def test_the_success_configuration_is_replaced_and_stamped() -> None:
    uow = make_uow()
    assert (await handlers.success_config(uow)).config == SuccessConfig()
    changed = SuccessConfig(renewal_window_days=60)
    saved = await handlers.replace_success_config(uow, changed, ADMIN)
    assert (saved.updated_at, saved.updated_by) == (T0 + timedelta(days=1), "u-admin")
    assert await handlers.success_config(uow) == saved


async def test_an_account_s_check_ins_and_surveys_are_listed_only_for_its_book() -> None:
    uow = make_uow(account())
    entry = handlers.CheckInEntry(held_at=T0, attendees=["Ada"], sentiment=Sentiment.POSITIVE)
    logged = await handlers.log_checkin(uow, "acc-1", entry, CARLA)
    assert [c.checkin_id for c in await handlers.account_checkins(uow, "acc-1", CARLA)] == [logged.checkin_id]
    sent = await handlers.send_nps(uow, "acc-1", SECRET, CARLA)
    assert [s.survey_id for s in await handlers.account_surveys(uow, "acc-1", ADMIN)] == [
        sent.survey.survey_id
    ]
    with pytest.raises(NotFound):
        await handlers.account_checkins(uow, "acc-1", DORA)
    with pytest.raises(NotFound):
        await handlers.account_surveys(uow, "acc-1", DORA)


async def test_a_survey_is_found_by_its_link_and_a_foreign_link_is_refused() -> None:
    uow = make_uow(account())
    sent = await handlers.send_nps(uow, "acc-1", SECRET, CARLA)
    found = await handlers.survey_by_link(uow, sent.token, SECRET)
    assert (found.survey_id, found.kind, found.answered_at) == (sent.survey.survey_id, SurveyKind.NPS, None)
    del uow.unit.surveys.items[found.survey_id]  # signed by us, unknown here: another installation's
    with pytest.raises(surveys.SurveyLinkInvalid):
        await handlers.survey_by_link(uow, sent.token, SECRET)


async def test_usage_keeps_the_latest_report_and_rescores_health() -> None:
    uow = make_uow(account())
    now = T0 + timedelta(days=1)
    newer = Usage(active_users=8, licensed_users=10, as_of=now)
    older = Usage(active_users=2, licensed_users=10, as_of=now - timedelta(days=3))
    assert (await handlers.record_usage(uow, "acc-1", newer, CARLA)).usage == newer
    assert (await handlers.record_usage(uow, "acc-1", older, CARLA)).usage == newer
    assert uow.unit.accounts.items["acc-1"].usage == newer
    assert uow.unit.emitted(HealthScoredV1)


async def test_a_rescore_scores_active_accounts_only() -> None:
    churned = replace(account("acc-2"), status=AccountStatus.CHURNED)
    uow = make_uow(account(), churned)
    await handlers.rescore(uow, "acc-2")
    await handlers.rescore(uow, "nope")
    assert uow.unit.emitted(HealthScoredV1) == []
    await handlers.rescore(uow, "acc-1")
    assert [e.account_id for e in uow.unit.emitted(HealthScoredV1)] == ["acc-1"]


async def test_an_unknown_commitment_review_is_404() -> None:
    with pytest.raises(NotFound, match="no commitment review 'r-9'"):
        await reviews.get_review(make_uow(), "r-9")


async def test_raised_items_of_an_account_need_the_account_in_sight() -> None:
    uow = make_uow(account())
    await action_items.check_account(uow, "acc-1", CARLA)
    with pytest.raises(NotFound, match="no account acc-1"):
        await action_items.check_account(uow, "acc-1", DORA)
