"""Fixtures: the platform's test plugin, and one running sales service per test module.

Each module gets its own fresh database and keeps the service name ``sales`` so
its dead-letter topic is the real ``crm.dlq.sales``. Events other test runs
produce may arrive too: tests assert on their own ids, never on totals.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI
from sales.consumers import TOPICS
from sales.main import create_app
from sales.settings import SalesSettings

pytest_plugins = ["crm_platform.testing"]


def headers(role: str, user_id: str, name: str | None = None) -> dict[str, str]:
    """A token whose ``sub`` (the identity sales uses) is ``user_id``; its display ``name``
    is ``name`` (default: the id), which sales must never compare."""
    # Imported here, not at the top: pytest registers crm_platform.testing as a plugin
    # (assertion rewriting) only if this conftest has not imported it first.
    from crm_platform.testing import token_for

    return {"Authorization": f"Bearer {token_for([role], name or user_id, user_id=user_id)}"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Test modules are imported in importlib mode and cannot import this file: the
# helpers reach them as methods of the ``sales`` fixture.
@dataclass
class Sales:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: ServiceRuntime
    settings: ServiceSettings

    uid = staticmethod(uid)
    headers = staticmethod(headers)

    def manager(self) -> dict[str, str]:
        return headers("sales_manager", "mona")

    def rep(self, username: str) -> dict[str, str]:
        return headers("sales_rep", username)

    @staticmethod
    def headers_of(roles: list[str], user_id: str = "reader") -> dict[str, str]:
        """A token holding all of ``roles``."""
        from crm_platform.testing import token_for

        return {"Authorization": f"Bearer {token_for(roles, user_id, user_id=user_id)}"}

    async def set_roster(self, **reps: bool) -> dict[str, Any]:
        body = {"reps": [{"user_id": u, "active": a} for u, a in reps.items()]}
        r = await self.client.put("/reps", json=body, headers=self.manager())
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def qualify(self, lead_id: str | None = None, **fields: Any) -> tuple[dict[str, Any], Any]:
        """Produce a lead.qualified handoff onto its topic and wait for its inbox item."""
        from crm_contracts import envelope_for
        from crm_contracts.topics import LEAD_QUALIFIED
        from crm_platform.testing import eventually, produce_envelope

        lead_id = lead_id or uid("lead")
        env = envelope_for(qualified(lead_id, **fields), source="leads", correlation_id=f"journey-{lead_id}")
        await produce_envelope(self.settings.kafka_bootstrap_servers, LEAD_QUALIFIED, env)

        async def landed() -> dict[str, Any] | None:
            item = await self.inbox_item(lead_id)
            return item if item is not None and item["id"] == str(env.event_id) else None

        item: dict[str, Any] = await eventually(landed, what=f"inbox item for {lead_id}")
        return item, env

    async def activate(self, *user_ids: str, active: bool = True) -> None:
        for u in user_ids:
            r = await self.client.put(f"/reps/{u}", json={"active": active}, headers=self.manager())
            assert r.status_code == 200, r.text

    async def assign(self, lead_id: str, owner: str) -> dict[str, Any]:
        r = await self.client.post(f"/inbox/{lead_id}/assign", json={"owner": owner}, headers=self.manager())
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def opportunity_for(self, rep: str, **fields: Any) -> dict[str, Any]:
        """An accepted lead's opportunity owned by ``rep`` (made active for it)."""
        await self.activate(rep)
        item, _ = await self.qualify(**fields)
        if item["owner"] != rep:
            await self.assign(item["lead_id"], rep)
        decision = await self.accept(item["lead_id"], rep)
        return dict(decision["opportunity"])

    async def inbox_item(self, lead_id: str) -> dict[str, Any] | None:
        r = await self.client.get(f"/inbox/{lead_id}", headers=self.manager())
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def opportunity(self, opp_id: str, as_: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.client.get(f"/opportunities/{opp_id}", headers=as_ or self.manager())
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def accept(self, lead_id: str, owner: str) -> dict[str, Any]:
        r = await self.client.post(f"/inbox/{lead_id}/accept", json={}, headers=self.rep(owner))
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def move(self, opp_id: str, stage: str, owner: str, **body: Any) -> httpx.Response:
        return await self.client.post(
            f"/opportunities/{opp_id}/stage", json={"stage": stage, **body}, headers=self.rep(owner)
        )


def qualified(lead_id: str, *, company: str = "Engines Ltd", email: str | None = None) -> Any:
    from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
    from crm_contracts.events.leads import LeadQualifiedV1

    return LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ada Lovelace", email=email or f"{lead_id}@example.com", role="CTO"),
        company=company,
        score=72.5,
        threshold=50.0,
        score_reasons=[
            ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=40.0),
            ScoreReason(behaviour=Behaviour.FORM_SUBMIT, count=1, points=32.5),
        ],
        source_channel="webinar",
        campaign="q1-launch",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1, Behaviour.FORM_SUBMIT: 1},
        consent=Consent(marketing_email=True, captured_at=datetime(2026, 1, 5, tzinfo=UTC)),
        qualified_at=datetime.now(UTC),
    )


@pytest.fixture
def make_qualified() -> Any:
    return qualified


@pytest.fixture(scope="module")
def sales_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    # A fresh database and a consumer group of its own (the service name, hence
    # crm.dlq.sales, is kept): another process consuming as group "sales" on the same
    # broker (another suite, a local `make run`) would otherwise take some of the
    # partitions, and this module's events would land in that process's database.
    from crm_platform.testing import isolated_settings

    return isolated_settings(SalesSettings, "sales", kafka_bootstrap, mongodb_uri)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sales(sales_settings: ServiceSettings) -> AsyncIterator[Sales]:
    from crm_platform.testing import running_app, start_group_at_end

    # The shared broker holds earlier runs' history: the module's group starts at the end.
    await start_group_at_end(sales_settings.kafka_bootstrap_servers, sales_settings.group_id, TOPICS)
    app = create_app(sales_settings)
    async with running_app(app) as client:
        yield Sales(app, client, app.state.runtime, sales_settings)
