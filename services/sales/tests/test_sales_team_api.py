"""The team and its rules: rep roster, pipeline configuration, roles, service edges."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import pytest
from sales import store
from sales.settings import SalesSettings

Sales: TypeAlias = Any  # conftest.Sales (conftest is not importable in importlib mode)


def test_settings_default_to_the_sales_service_on_port_8002(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    monkeypatch.setenv("MONGODB_URI", "mongodb://m")
    for var in ("CRM_SERVICE_NAME", "CRM_HTTP_PORT", "CRM_SALES_LEAD_RESPONSE_SLA_MINUTES"):
        monkeypatch.delenv(var, raising=False)
    s = SalesSettings()
    assert (s.service_name, s.http_port, s.database_name, s.group_id) == ("sales", 8002, "sales", "sales")
    assert s.lead_response_sla_minutes == 60
    monkeypatch.setenv("CRM_SALES_LEAD_RESPONSE_SLA_MINUTES", "15")
    assert SalesSettings().lead_response_sla_minutes == 15


@pytest.mark.integration
async def test_the_roster_is_edited_by_managers_and_read_by_sales(sales: Sales) -> None:
    a, b, c = sales.uid("ada"), sales.uid("ben"), sales.uid("cy")
    r = await sales.client.put("/reps", json={"reps": [{"user_id": a}]}, headers=sales.rep(a))
    assert r.status_code == 403
    for bad in (
        {"reps": [{"user_id": a}, {"user_id": a}]},
        {"reps": [{"user_id": "has space"}]},
        {"reps": [{"user_id": a, "active": "yes"}]},
        {"reps": [{"user_id": a, "team": "x"}]},
    ):
        r = await sales.client.put("/reps", json=bad, headers=sales.manager())
        assert r.status_code == 422, bad

    roster = await sales.set_roster(**{b: True, a: True, c: False})
    assert [r["user_id"] for r in roster["reps"]] == sorted([a, b, c])
    assert roster["rotation"] == sorted([a, b])
    assert roster["next_up"] in {a, b}
    assert roster["reps"][0]["updated_by"] == "mona"

    r = await sales.client.put(f"/reps/{c}", json={"active": True}, headers=sales.headers("admin", "root"))
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), "user_id": c, "active": True, "updated_by": "root"}
    r = await sales.client.get("/reps", headers=sales.rep(a))
    assert r.status_code == 200
    assert r.json()["rotation"] == sorted([a, b, c])

    roster = await sales.set_roster(**{a: True})  # PUT replaces: b and c leave the roster
    assert [r["user_id"] for r in roster["reps"]] == [a]
    assert roster["next_up"] == a
    r = await sales.client.get("/reps", headers=sales.headers("marketing", "mia"))
    assert r.status_code == 403


@pytest.mark.integration
async def test_a_rep_activated_here_is_assignable_at_once_though_an_older_transaction_read_the_roster(
    sales: Sales,
) -> None:
    """This replica uses its own roster change at once (crm_platform.cache), even when a
    transaction that began before the change committed (a consumer's batch, say) reads the
    roster after it: that transaction sees its snapshot's roster, and must not keep it in the
    cache, or the new rep is refused (422) for ``CRM_CONFIG_CACHE_SECONDS``."""
    rep = sales.uid("nia")
    uow = sales.app.state.uow
    began, changed = asyncio.Event(), asyncio.Event()

    async def older(unit: Any) -> list[str]:
        await unit.tx.db[store.REPS].find_one({}, session=unit.tx.session)  # its snapshot is fixed here
        began.set()
        await changed.wait()
        return list(await unit.team.active_rep_ids())

    reading = asyncio.create_task(uow.run(older))
    await began.wait()
    await sales.activate(rep)  # committed, and this replica's cache dropped
    changed.set()
    assert rep not in await reading, "the older transaction reads its snapshot"

    async def roster(unit: Any) -> list[str]:
        return list(await unit.team.active_rep_ids())

    assert rep in await uow.run(roster), "the snapshot's roster was not kept"
    item, _ = await sales.qualify()
    assigned = await sales.assign(item["lead_id"], rep)
    assert assigned["owner"] == rep


@pytest.mark.integration
async def test_managers_shape_the_pipeline_and_opportunities_follow_it(sales: Sales) -> None:
    r = await sales.client.get("/pipeline", headers=sales.headers("analyst", "ana"))
    assert r.status_code == 200
    default = r.json()
    assert default["version"] == 1
    assert [(s["name"], s["probability"], s["required_fields"], s["closed"]) for s in default["stages"]] == [
        ("qualification", 0.1, [], False),
        ("discovery", 0.2, ["budget", "decision_maker"], False),
        ("proposal", 0.5, ["amount", "products"], False),
        ("negotiation", 0.7, ["close_date"], False),
        ("won", 1.0, ["amount", "products", "commitments"], True),
        ("lost", 0.0, ["lost_reason"], True),
    ]

    custom = {
        "stages": [
            {"name": "qualification", "probability": 0.1},
            {"name": "discovery", "probability": 0.25, "required_fields": ["budget", "decision_maker"]},
            {"name": "legal_review", "probability": 0.6, "required_fields": ["legal_approver"]},
            {"name": "won", "probability": 1.0, "required_fields": ["amount", "products", "commitments"]},
            {"name": "lost", "probability": 0.0, "required_fields": ["lost_reason"]},
        ]
    }
    r = await sales.client.put("/pipeline", json=custom, headers=sales.rep("rita"))
    assert r.status_code == 403

    broken = {
        "stages": [
            {"name": "won", "probability": 1.0, "required_fields": ["amount"]},
            {"name": "pitch", "probability": 0.4},
        ]
    }
    r = await sales.client.put("/pipeline", json=broken, headers=sales.manager())
    assert r.status_code == 422
    problems = " | ".join(r.json()["details"]["problems"])
    assert "'lost'" in problems
    assert "must come after every open stage" in problems
    assert "['products', 'commitments']" in problems
    r = await sales.client.put(
        "/pipeline", json={"stages": [{"name": "x", "probability": 2}]}, headers=sales.manager()
    )
    assert r.status_code == 422

    # An opportunity sitting in 'negotiation' keeps that stage from being removed.
    rep = sales.uid("nina")
    opp = await sales.opportunity_for(rep)
    r = await sales.move(opp["id"], "negotiation", rep, fields={"close_date": "2026-09-30"})
    assert r.status_code == 200, r.text
    r = await sales.client.put("/pipeline", json=custom, headers=sales.manager())
    assert r.status_code == 409
    assert r.json()["details"]["stages"] == {"negotiation": 1}
    r = await sales.move(opp["id"], "lost", rep, fields={"lost_reason": "budget frozen"})
    assert r.status_code == 200

    r = await sales.client.put("/pipeline", json=custom, headers=sales.manager())
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    assert r.json()["updated_by"] == "mona"
    fresh = await sales.opportunity_for(rep)
    try:
        assert fresh["stage"] == "qualification"
        r = await sales.move(fresh["id"], "negotiation", rep)
        assert r.status_code == 422, "no such stage any more"
        r = await sales.move(fresh["id"], "legal_review", rep)
        assert r.json()["details"]["missing"] == ["legal_approver"]
        r = await sales.move(fresh["id"], "legal_review", rep, fields={"legal_approver": "Dr. Who"})
        assert r.status_code == 200, r.text
        assert r.json()["fields"]["legal_approver"] == "Dr. Who"
        r = await sales.client.get("/forecast", headers=sales.rep(rep))
        f = r.json()
        assert f["pipeline_version"] == 2
        assert [s["stage"] for s in f["stages"]] == [
            "qualification",
            "discovery",
            "legal_review",
            "won",
            "lost",
        ]
        assert {s["stage"]: s["count"] for s in f["stages"]}["legal_review"] == 1
    finally:
        restore = {
            "stages": [
                {k: s[k] for k in ("name", "probability", "required_fields")} for s in default["stages"]
            ]
        }
        await sales.client.post(
            f"/opportunities/{fresh['id']}/stage",
            json={"stage": "lost", "fields": {"lost_reason": "test over"}},
            headers=sales.manager(),
        )
        r = await sales.client.put("/pipeline", json=restore, headers=sales.manager())
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 3


@pytest.mark.integration
async def test_service_edges_and_authentication(sales: Sales) -> None:
    r = await sales.client.get("/healthz")
    assert r.json() == {"status": "ok", "service": "sales"}
    r = await sales.client.get("/readyz")
    assert r.status_code == 200, r.text
    for method, path in (("GET", "/inbox"), ("GET", "/forecast"), ("PUT", "/config"), ("GET", "/pipeline")):
        r = await sales.client.request(method, path)
        assert r.status_code == 401, (method, path)
    r = await sales.client.get("/inbox", headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401
    r = await sales.client.get("/inbox", headers=sales.headers("service_rep", "sam"))
    assert r.status_code == 403
    r = await sales.client.get("/pipeline", headers=sales.headers("service_rep", "sam"))
    assert r.status_code == 403


@pytest.mark.integration
async def test_managers_read_each_reps_response_times(sales: Sales) -> None:
    """From a lead reaching the rep's inbox to their verdict, per rep; what waits is counted."""
    rep = sales.uid("rt")
    await sales.activate(rep)
    answered, _ = await sales.qualify()
    waiting, _ = await sales.qualify()
    for item in (answered, waiting):
        if item["owner"] != rep:
            await sales.assign(item["lead_id"], rep)
    await sales.accept(answered["lead_id"], rep)

    r = await sales.client.get("/reps/response-times", params={"days": 7}, headers=sales.manager())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["days"] == 7
    assert body["truncated"] is False
    mine = next(x for x in body["reps"] if x["owner"] == rep)
    assert mine["answered"] == 1
    assert mine["within_sla"] == 1
    assert mine["pending"] == 1
    assert mine["pending_overdue"] == 0
    assert 0 <= mine["p50_seconds"] == mine["p90_seconds"] < 60
    assert mine["oldest_pending_seconds"] >= 0

    r = await sales.client.get("/reps/response-times", headers=sales.rep(rep))
    assert r.status_code == 403
    for days in ("0", "91", "x"):
        r = await sales.client.get("/reps/response-times", params={"days": days}, headers=sales.manager())
        assert r.status_code == 422, days
