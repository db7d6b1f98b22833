"""Records sales creates itself (accounts, contacts, direct opportunities) against the fakes:
who owns them, what is refused, what analytics and customer success are sent. No I/O."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from crm_contracts.events.sales import (
    DealWonV2,
    OpportunityCreatedV3,
    SalesAccountCreatedV2,
    SalesContactCreatedV1,
)
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.errors import Conflict, Forbidden, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from sales import handlers
from sales.domain.account import DirectSource, name_key
from sales.domain.assignment import Rep
from sales.domain.contact import Contact, email_key
from sales.domain.opportunity import Origin
from sales.domain.review import ReviewPolicy
from sales.fakes import FakeSalesUnit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RITA = Actor.of("rita", ["sales_rep"])
SAM = Actor.of("sam", ["sales_rep"])
MONA = Actor.of("mona", ["sales_manager"])
Uow = FakeUnitOfWork[FakeSalesUnit]
PRODUCTS = [{"sku": "CRM", "name": "CRM seat", "quantity": 1, "unit_price": 400}]


def make_uow() -> Uow:
    ids = (f"id-{n}" for n in itertools.count(1))
    reps = [Rep("rita", True), Rep("sam", True), Rep("olga", False)]
    return FakeUnitOfWork(FakeSalesUnit(reps), clock=ManualClock(T0), new_id=lambda: next(ids))


def test_identities_follow_the_captures_rules() -> None:
    assert name_key("  Engines   LTD ") == name_key("engines ltd")
    assert email_key(" Ada@Example.COM ") == "ada@example.com"


def test_an_import_merges_a_known_contact_filling_only_empty_fields() -> None:
    contact, _ = Contact.add(
        "c1", email="a@x.io", name="Ada", owner="rita", source="import", by="rita", now=T0
    )
    later = datetime(2026, 3, 3, tzinfo=UTC)
    assert contact.merge(name="Other", phone="+44 1", role=None, account_id="a1", now=later)
    assert (contact.name, contact.phone, contact.account_id, contact.updated_at) == (
        "Ada",
        "+44 1",
        "a1",
        later,
    )
    assert not contact.merge(name="Ada", phone="+44 2", role=None, account_id="a2", now=T0)


async def test_a_rep_opens_an_account_contact_and_opportunity_in_their_book() -> None:
    uow = make_uow()
    account = await handlers.create_account(
        uow, handlers.NewAccount(" Acme  Ltd", DirectSource.REFERRAL), RITA
    )
    assert (account.name, account.owner) == ("Acme Ltd", "rita")
    new_contact = handlers.NewContact("Ada@X.io", "Ada", DirectSource.REFERRAL, account_id=account.id)
    contact = await handlers.create_contact(uow, new_contact, RITA)
    opp = await handlers.create_opportunity(
        uow, handlers.NewOpportunity(account.id, DirectSource.REFERRAL, (contact.id,)), RITA
    )
    assert (opp.origin, opp.owner, opp.account_id, opp.stage) == (
        Origin.DIRECT,
        "rita",
        account.id,
        "qualification",
    )
    assert opp.contacts == [{"name": "Ada", "email": "ada@x.io", "phone": None, "role": None}]
    events = uow.unit.events
    assert [type(e.event) for e in events] == [
        SalesAccountCreatedV2,
        SalesContactCreatedV1,
        OpportunityCreatedV3,
    ]
    created = uow.unit.emitted(OpportunityCreatedV3)[0]
    assert (created.origin, created.source, created.account_id) == ("direct", "referral", account.id)
    assert "ada" not in uow.unit.emitted(SalesContactCreatedV1)[0].model_dump_json().lower()


async def test_a_won_direct_deal_is_handed_to_customer_success() -> None:
    uow = make_uow()
    account = await handlers.create_account(uow, handlers.NewAccount("Acme", DirectSource.OUTBOUND), RITA)
    contact = await handlers.create_contact(
        uow, handlers.NewContact("a@x.io", "Ada", DirectSource.OUTBOUND), RITA
    )
    opp = await handlers.create_opportunity(
        uow, handlers.NewOpportunity(account.id, DirectSource.OUTBOUND, (contact.id,)), RITA
    )
    uow.unit.team.policy = ReviewPolicy()
    fields = {"amount": 400, "products": PRODUCTS, "commitments": []}
    await handlers.move_stage(uow, opp.id, "won", fields, [], RITA)
    (deal,) = uow.unit.emitted(DealWonV2)
    assert (deal.deal_id, deal.account_name, deal.lead_id) == (opp.id, "Acme", None)
    assert [c.email for c in deal.contacts] == ["a@x.io"]


async def test_who_owns_what_is_created() -> None:
    uow = make_uow()
    with pytest.raises(Forbidden):
        await handlers.create_account(uow, handlers.NewAccount("A", DirectSource.OTHER, owner="sam"), RITA)
    with pytest.raises(RuleViolation, match=r"body\.owner"):
        await handlers.create_account(uow, handlers.NewAccount("A", DirectSource.OTHER, owner="olga"), MONA)
    mine = await handlers.create_account(uow, handlers.NewAccount("A", DirectSource.OTHER), MONA)
    assert mine.owner == "mona"
    sams = await handlers.create_account(uow, handlers.NewAccount("B", DirectSource.OTHER, owner="sam"), MONA)
    assert sams.owner == "sam"
    with pytest.raises(Forbidden):  # rita may not sell on sam's account
        await handlers.create_opportunity(uow, handlers.NewOpportunity(sams.id, DirectSource.OTHER), RITA)
    assert uow.unit.opportunities.opportunities == {}


async def test_duplicates_and_unknown_references_are_refused() -> None:
    uow = make_uow()
    account = await handlers.create_account(uow, handlers.NewAccount("Acme", DirectSource.OTHER), RITA)
    with pytest.raises(Conflict):
        await handlers.create_account(uow, handlers.NewAccount(" ACME ", DirectSource.OTHER), SAM)
    await handlers.create_contact(uow, handlers.NewContact("a@x.io", "Ada", DirectSource.OTHER), RITA)
    with pytest.raises(Conflict):
        await handlers.create_contact(uow, handlers.NewContact(" A@X.IO", "Ada", DirectSource.OTHER), SAM)
    with pytest.raises(NotFound, match="nope"):
        await handlers.create_contact(
            uow, handlers.NewContact("b@x.io", "B", DirectSource.OTHER, "nope"), RITA
        )
    new = handlers.NewOpportunity(account.id, DirectSource.OTHER, ("c-missing",))
    with pytest.raises(NotFound, match="c-missing"):
        await handlers.create_opportunity(uow, new, RITA)
    assert len(uow.unit.contacts.contacts) == 1
    assert uow.unit.opportunities.opportunities == {}
