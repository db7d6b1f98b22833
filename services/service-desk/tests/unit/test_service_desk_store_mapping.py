"""Entity <-> document in ``store.py``, without a database: what is saved reads back equal, and
documents written earlier (doubles for amounts, strings for enums, fields the entity no longer
knows) still read into the dataclasses (Decimal128 is decoded by the platform's client)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import Commitment, DealWonV1, Product
from crm_contracts.events.service_desk import HealthBand, SignalKind
from service_desk.domain.accounts import Account, AccountStatus, Usage, account_from_deal
from service_desk.domain.config import DEFAULT_CHECKLIST, Priority, SlaTarget
from service_desk.domain.health import HealthRules as Rules
from service_desk.domain.health import HealthState, RuleSet, StoredReason
from service_desk.domain.tickets import TicketStatus, open_ticket
from service_desk.store import (
    account_doc,
    account_from_doc,
    ruleset_doc,
    ticket_doc,
    ticket_from_doc,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _account() -> Account:
    deal = DealWonV1(
        deal_id="deal-1",
        account_name="Acme",
        contacts=[Contact(name="Ada", email="ada@acme.example")],
        products=[Product(sku="CRM", name="CRM", quantity=5, unit_price=90.5)],
        value=Money(amount=452.5, currency="EUR"),
        sales_owner="u-sam",
        won_at=T0,
        commitments=[Commitment(commitment_id="c-1", description="SSO")],
    )
    account = account_from_deal(deal, account_id="acc-1", csm="u-carla", checklist=DEFAULT_CHECKLIST, now=T0)
    account.complete_item(account.onboarding.checklist[0].key, by="u-carla", now=T0)
    account.spot_signal(
        signal_id="s-1",
        kind=SignalKind.UPSELL,
        description="more seats",
        estimated_value=Decimal("1000.10"),
        by="u-carla",
        now=T0,
    )
    account.flag_commitment("c-1", flag_id="f-1", reason="too much", by="u-carla", now=T0)
    account.record_usage(Usage(active_users=3, licensed_users=5, as_of=T0))
    account.health = HealthState(
        score=71.5,
        band=HealthBand.HEALTHY,
        rules_version=2,
        reasons=[StoredReason(component="usage", points=10, detail="60% of licences in use")],
        scored_at=T0,
        signals=["falling_trend"],
    )
    return account


def test_an_account_reads_back_equal_to_what_was_saved() -> None:
    account = _account()
    doc = account_doc(account)
    assert doc["_id"] == "acc-1"
    assert doc["value"] == {"amount": Decimal("452.5"), "currency": "EUR"}
    assert account_from_doc(doc) == account


def test_an_older_account_document_still_reads() -> None:
    doc = account_doc(_account())
    doc["value"]["amount"] = 452.5  # stored as a double before amounts were exact
    doc["status"] = "churned"
    doc["retired_field"] = {"anything": 1}  # a field this version no longer knows
    account = account_from_doc(doc)
    assert account.value.amount == Decimal("452.5")
    assert account.status is AccountStatus.CHURNED
    assert account.health is not None
    assert account.health.reasons[0].component == "usage"


def test_a_ticket_reads_back_equal_and_its_enums_from_strings() -> None:
    ticket = open_ticket(
        ticket_id="t-1",
        account_id="acc-1",
        account_name="Acme",
        subject="Login",
        request="Cannot log in",
        priority=Priority.HIGH,
        opened_by="u-rep",
        assignee="u-rep",
        target=SlaTarget(first_response_hours=1, resolution_hours=8),
        now=T0,
    )
    ticket.add_progress("looking", by="u-rep", now=T0 + timedelta(minutes=5))
    doc = ticket_doc(ticket)
    assert ticket_from_doc(doc) == ticket
    doc.update(priority="urgent", status="resolved")
    read = ticket_from_doc(doc)
    assert (read.priority, read.status) == (Priority.URGENT, TicketStatus.RESOLVED)


def test_a_rule_set_is_stored_with_its_rules_as_a_document() -> None:
    doc = ruleset_doc(RuleSet(version=3, rules=Rules(base=50), created_at=T0, created_by="u-lead"))
    assert doc["version"] == 3
    assert doc["rules"]["base"] == 50
    assert doc["created_by"] == "u-lead"
