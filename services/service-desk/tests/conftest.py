from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from crm_contracts import utcnow
from crm_contracts.events.common import Contact, Money
from crm_contracts.events.sales import Commitment, DealWonV1, Product
from crm_platform.settings import ServiceSettings
from pymongo import MongoClient

pytest_plugins = ["crm_platform.testing"]


@pytest.fixture(scope="module")
def desk_settings(kafka_bootstrap: str, mongodb_uri: str) -> Iterator[Callable[..., ServiceSettings]]:
    """Module-scoped settings for one service-desk app: a fresh database, its own consumer group.

    The service name stays "service-desk" (so the dead-letter topic is the real one);
    the consumer group is unique so no other process consuming deal.won steals our events.
    """

    from crm_platform.testing import isolated_settings

    def build(**overrides: Any) -> ServiceSettings:
        settings = isolated_settings(
            ServiceSettings, "service-desk", kafka_bootstrap, mongodb_uri, **overrides
        )
        databases.append(settings.database_name)
        return settings

    databases: list[str] = []
    yield build
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        for name in databases:
            client.drop_database(name)


@pytest.fixture(scope="session")
def make_deal() -> Callable[..., DealWonV1]:
    def build(**overrides: Any) -> DealWonV1:
        values: dict[str, Any] = {
            "deal_id": f"deal-{uuid.uuid4().hex[:12]}",
            "lead_id": f"lead-{uuid.uuid4().hex[:8]}",
            "account_name": "Acme GmbH",
            "contacts": [Contact(name="Ada Lovelace", email="ada@acme.example", role="CTO")],
            "products": [Product(sku="CRM-ENT", name="CRM Enterprise", quantity=50, unit_price=90.0)],
            "value": Money(amount=54000.0, currency="EUR"),
            "commitments": [
                Commitment(commitment_id="c-sso", description="SSO with Azure AD by go-live"),
                Commitment(
                    commitment_id="c-sap",
                    description="Nightly export to SAP",
                    due_date=utcnow() + timedelta(days=30),
                ),
            ],
            "sales_owner": "sam.sales",
            "won_at": utcnow(),
        }
        values.update(overrides)
        return DealWonV1.model_validate(values)

    return build
