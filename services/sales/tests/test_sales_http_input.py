"""Bad numbers and timestamps from outside are a 422, never a 500 or a stored null; safe retries.

Before: ``1e309``/``Infinity``/``NaN`` amounts were stored and came back as
``null`` (turning forecast values into ``null``); an activity dated
``0001-01-01T00:00:00+01:00`` and a custom field above 2^63 were 500s.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from bson.decimal128 import Decimal128

PRODUCTS = [{"sku": "P-1", "name": "Platform", "quantity": 1, "unit_price": 100}]
NON_FINITE = ["1e309", "-1e309", "Infinity", "-Infinity", "NaN"]


async def _post_raw(sales: Any, url: str, body: str, headers: dict[str, str]) -> Any:
    return await sales.client.post(url, content=body, headers={**headers, "content-type": "application/json"})


@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_amounts_are_refused_everywhere(sales: Any, value: str) -> None:
    rep = sales.uid("nora")
    opp = await sales.opportunity_for(rep)
    h = sales.rep(rep)
    patch = f"/opportunities/{opp['id']}"
    for body in (
        f'{{"fields": {{"amount": {value}}}}}',
        f'{{"fields": {{"budget": {value}}}}}',
        f'{{"fields": {{"custom_score": {value}}}}}',
        f'{{"fields": {{"products": [{{"sku": "a", "name": "b", "quantity": 1, "unit_price": {value}}}]}}}}',
    ):
        r = await sales.client.patch(patch, content=body, headers={**h, "content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
    quote = f'{{"type": "quote", "summary": "q", "amount": {value}}}'
    r = await _post_raw(sales, f"{patch}/activities", quote, h)
    assert r.status_code == 422, r.text
    assert (await sales.opportunity(opp["id"], h))["amount"] is None


async def test_amounts_are_bounded_and_exact_to_the_cent(sales: Any) -> None:
    rep = sales.uid("olga")
    opp = await sales.opportunity_for(rep)
    url, h = f"/opportunities/{opp['id']}", sales.rep(rep)
    for bad in (-1, 10**13, 12.345, "abc"):
        r = await sales.client.patch(url, json={"fields": {"amount": bad}}, headers=h)
        assert r.status_code == 422, (bad, r.text)
    r = await sales.client.patch(url, json={"fields": {"amount": "1234.10", "budget": 0.1}}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["amount"] == 1234.1
    assert r.json()["fields"]["budget"] == 0.1
    # Stored exactly, as Decimal128.
    raw = await sales.runtime.store.client[sales.settings.database_name]["opportunities"].find_one(
        {"_id": opp["id"]}, {"amount": 1}
    )
    assert raw is not None
    assert raw["amount"] == Decimal("1234.10")


async def test_custom_fields_out_of_range_are_a_422(sales: Any) -> None:
    rep = sales.uid("pia")
    opp = await sales.opportunity_for(rep)
    url, h = f"/opportunities/{opp['id']}", sales.rep(rep)
    for value in (2**63, -(2**63) - 1, [2**64]):
        r = await sales.client.patch(url, json={"fields": {"seats": value}}, headers=h)
        assert r.status_code == 422, (value, r.text)
        assert "seats" in r.text
    r = await sales.client.patch(url, json={"fields": {"seats": 2**63 - 1}}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["fields"]["seats"] == 2**63 - 1


@pytest.mark.parametrize(
    "occurred_at",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1800-01-01T00:00:00Z", "2026-01-01T10:00:00"],
)
async def test_activity_timestamps_out_of_range_or_without_zone_are_a_422(
    sales: Any, occurred_at: str
) -> None:
    rep = sales.uid("quin")
    opp = await sales.opportunity_for(rep)
    r = await sales.client.post(
        f"/opportunities/{opp['id']}/activities",
        json={"type": "call", "summary": "x", "occurred_at": occurred_at},
        headers=sales.rep(rep),
    )
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"].endswith("occurred_at")


async def test_forecast_values_stay_numbers(sales: Any) -> None:
    rep = sales.uid("rita")
    opp = await sales.opportunity_for(rep)
    r = await sales.move(opp["id"], "proposal", rep, fields={"amount": "0.10", "products": PRODUCTS})
    assert r.status_code == 200, r.text
    f = (await sales.client.get("/forecast", headers=sales.rep(rep))).json()
    rows = {s["stage"]: s for s in f["stages"]}
    assert rows["proposal"]["value"] == 0.1
    assert rows["proposal"]["weighted"] == 0.05
    assert all(isinstance(s["value"], float | int) for s in f["stages"])


def test_decimal128_round_trips_the_cents() -> None:
    assert Decimal128(Decimal("999999999999.99")).to_decimal() == Decimal("999999999999.99")


async def test_a_retried_activity_with_its_idempotency_key_is_logged_once(sales: Any) -> None:
    rep = sales.uid("sven")
    opp = await sales.opportunity_for(rep)
    url = f"/opportunities/{opp['id']}/activities"
    headers = {**sales.rep(rep), "Idempotency-Key": sales.uid("key")}
    body = {"type": "quote", "summary": "Quote v1", "amount": "4800.50"}
    first = await sales.client.post(url, json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await sales.client.post(url, json=body, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())
    assert (await sales.opportunity(opp["id"], sales.rep(rep)))["activity_count"] == 1
    changed = await sales.client.post(url, json={**body, "amount": "1.00"}, headers=headers)
    assert changed.status_code == 422
    assert changed.json()["error"] == "idempotency_key_reused"
