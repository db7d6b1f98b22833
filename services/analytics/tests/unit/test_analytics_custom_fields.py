"""Custom fields in analytics: the extension map of lead.captured v2 folded into the KPIs' breakdown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.kpis import compute
from crm_contracts import Envelope, decode, envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV2
from crm_contracts.events.sales import OpportunityCreatedV3, SalesAccountCreatedV2
from crm_contracts.events.service_desk import TicketOpenedV2

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def captured(lead: str, custom: dict[str, Any], minutes: int = 0, merged: bool = False) -> Envelope:
    event = LeadCapturedV2.model_validate(
        {
            "lead_id": lead,
            "email": f"{lead}@example.com",
            "name": "Ada",
            "company": "Acme",
            "source_channel": "web",
            "consent": Consent(marketing_email=True),
            "merged": merged,
            "custom": custom,
        }
    )
    return envelope_for(
        event, source="leads", correlation_id="c", occurred_at=NOW - timedelta(minutes=60 - minutes)
    )


def breakdown(envelopes: list[Envelope]) -> Any:
    state = AnalyticsState()
    for e in envelopes:
        apply(state, e, decode(e))
    return compute(state.records, NOW)["custom_fields"]


def choice(value: str) -> dict[str, Any]:
    return {"type": "choice", "value": value}


def test_each_lead_counts_once_with_its_latest_values_in_any_order() -> None:
    """Each event carries the record's whole map: the latest one replaces the earlier."""
    money = {"type": "money", "value": {"amount": "100.50", "currency": "EUR"}}
    more = {"type": "money", "value": {"amount": "200.25", "currency": "EUR"}}
    events = [
        captured("l1", {"tier": choice("gold"), "seats": {"type": "number", "value": 10}, "budget": money}),
        captured("l2", {"tier": choice("gold"), "renewal": {"type": "date", "value": "2027-03-31"}}),
        captured(
            "l1",
            {"tier": choice("silver"), "seats": {"type": "number", "value": 12}, "budget": more},
            5,
            True,
        ),
        captured("l3", {"renewal": {"type": "date", "value": "2026-12-01"}}),
    ]
    expected = {
        "lead": {
            "budget": {"type": "money", "count": 1, "sum_by_currency": {"EUR": 200.25}},
            "renewal": {"type": "date", "count": 2, "earliest": "2026-12-01", "latest": "2027-03-31"},
            "seats": {"type": "number", "count": 1, "sum": 12},
            "tier": {"type": "choice", "count": 2, "values": {"gold": 1, "silver": 1}},
        }
    }
    assert breakdown(events) == expected
    assert breakdown(list(reversed(events)) + events) == expected, "order and redelivery change nothing"


def test_a_lead_without_custom_values_adds_nothing() -> None:
    assert breakdown([captured("l1", {})]) == {}


def test_sales_accounts_are_broken_down_under_their_own_kind() -> None:
    event = SalesAccountCreatedV2.model_validate(
        {
            "account_id": "a1",
            "name": "Acme",
            "owner": "rita",
            "source": "referral",
            "custom": {"segment": choice("ent")},
        }
    )
    env = envelope_for(event, source="sales", correlation_id="c", occurred_at=NOW - timedelta(minutes=5))
    assert breakdown([env]) == {
        "sales_account": {"segment": {"type": "choice", "count": 1, "values": {"ent": 1}}}
    }


def test_opportunities_and_tickets_are_broken_down_under_their_own_kinds() -> None:
    opportunity = OpportunityCreatedV3.model_validate(
        {
            "opportunity_id": "o1",
            "account_name": "Acme",
            "owner": "rita",
            "stage": "qualification",
            "origin": "direct",
            "source": "referral",
            "custom": {"deal_type": choice("new"), "seats": {"type": "number", "value": 40}},
        }
    )
    ticket = TicketOpenedV2.model_validate(
        {
            "ticket_id": "t1",
            "account_id": "a1",
            "priority": "high",
            "assignee": "sam",
            "custom": {"component": choice("billing")},
        }
    )
    envs = [
        envelope_for(event, source=source, correlation_id="c", occurred_at=NOW - timedelta(minutes=5))
        for event, source in ((opportunity, "sales"), (ticket, "service-desk"))
    ]
    assert breakdown(envs) == {
        "opportunity": {
            "deal_type": {"type": "choice", "count": 1, "values": {"new": 1}},
            "seats": {"type": "number", "count": 1, "sum": 40},
        },
        "ticket": {"component": {"type": "choice", "count": 1, "values": {"billing": 1}}},
    }
    state = AnalyticsState()
    for e in envs:
        apply(state, e, decode(e))
    assert {"opened", "last_custom"} <= set(state.records["ticket:t1"]), (
        "its service figures stay beside them"
    )
