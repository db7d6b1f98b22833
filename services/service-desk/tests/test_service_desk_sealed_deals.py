"""Customer success opens sales' sealed ``deal.won`` v3 (issue 9, crypto-shredding;
crm_platform.shredding) on the real broker and mongod: the account gets the contacts' real
names, e-mails and phones once sales' keys for them are in the desk's database, whether the
keys arrived first or AFTER the deal (the deal is retried meanwhile, not dead-lettered)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from crm_contracts import envelope_for, topics
from crm_contracts.events.common import Contact
from crm_contracts.events.sales import DealWonV1, DealWonV2
from crm_platform.settings import ServiceSettings
from crm_platform.shredding import KEYS, sealed_event
from crm_platform.testing import eventually, produce_envelope, running_app, start_group_at_end, token_for
from prometheus_client import REGISTRY
from service_desk.main import create_app

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {token_for(['admin'], 'ada.admin', user_id='ada.admin')}"}
PEOPLE = [
    Contact(name="Ada Lovelace", email="ada@acme.example", phone="+44 20 7946 0000", role="CTO"),
    Contact(name="Bob Stone", email="bob@acme.example", role="CFO"),
]


@pytest.fixture(scope="module")
async def desk(
    desk_settings: Callable[..., ServiceSettings], kafka_bootstrap: str
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = desk_settings()
    await start_group_at_end(kafka_bootstrap, settings.group_id, [topics.DEAL_WON])
    app = create_app(settings)
    async with running_app(app) as client:
        yield app, client


async def _publish(bootstrap: str, topic: str, event: Any, deal_id: str) -> None:
    await produce_envelope(bootstrap, topic, envelope_for(event, source="sales", correlation_id=deal_id))


async def _account(client: httpx.AsyncClient, deal_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await client.get("/accounts", params={"deal_id": deal_id}, headers=ADMIN)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if not items:
            return None
        one = await client.get(f"/accounts/{items[0]['account_id']}", headers=ADMIN)
        assert one.status_code == 200, one.text
        return dict(one.json())

    found: dict[str, Any] = await eventually(check, what=f"account for deal {deal_id}")
    return found


def _sealed(make_deal: Callable[..., DealWonV1]) -> tuple[Any, list[Any]]:
    deal = DealWonV2.model_validate(
        {**make_deal().to_payload(), "contacts": [p.model_dump() for p in PEOPLE]}
    )
    return sealed_event(deal, "sales")


def _contacts(account: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(c["name"], c["email"], c.get("phone")) for c in account["contacts"]]


EXPECTED = [(p.name, str(p.email), p.phone) for p in PEOPLE]


async def test_a_sealed_deal_opens_when_its_keys_arrived_first(
    desk: tuple[Any, httpx.AsyncClient], kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    app, client = desk
    deal, keys = _sealed(make_deal)
    for key in keys:
        await _publish(kafka_bootstrap, topics.SALES_PERSON_KEYS, key, deal.deal_id)
    await _publish(kafka_bootstrap, topics.DEAL_WON, deal, deal.deal_id)
    assert _contacts(await _account(client, deal.deal_id)) == EXPECTED

    # The deal may open with keys the key consumer has fetched and not yet stored (its own
    # transaction, a moment later; crm_platform.shredding "fetched"): both end up held.
    async def both_held() -> bool:
        held = await app.state.runtime.db[KEYS].count_documents(
            {"person_id": {"$in": [k.person_id for k in keys]}}
        )
        return held == 2

    assert await eventually(both_held, what="both person keys held")


async def test_a_sealed_deal_whose_keys_come_later_waits_for_them(
    desk: tuple[Any, httpx.AsyncClient], kafka_bootstrap: str, make_deal: Callable[..., DealWonV1]
) -> None:
    _, client = desk
    deal, keys = _sealed(make_deal)
    labels = {"service": "service-desk", "topic": topics.DEAL_WON}
    before = REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0
    await _publish(kafka_bootstrap, topics.DEAL_WON, deal, deal.deal_id)

    async def waiting() -> bool:
        return (REGISTRY.get_sample_value("crm_person_key_waits_total", labels) or 0.0) > before

    await eventually(waiting, what="the deal waiting for its keys")
    r = await client.get("/accounts", params={"deal_id": deal.deal_id}, headers=ADMIN)
    assert r.json()["items"] == []
    for key in keys:
        await _publish(kafka_bootstrap, topics.SALES_PERSON_KEYS, key, deal.deal_id)
    assert _contacts(await _account(client, deal.deal_id)) == EXPECTED
