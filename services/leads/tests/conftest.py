"""Fixtures: the platform's test plugin, and one running leads service per test module.

Each module gets its own fresh database (as ``make_settings`` gives) and keeps
the service name ``leads`` so its dead-letter topic is the real ``crm.dlq.leads``.
Tests in a module share the app, so each test uses its own emails and lead ids.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx
import pytest
import pytest_asyncio
from crm_platform.runtime import ServiceRuntime
from crm_platform.settings import ServiceSettings
from fastapi import FastAPI
from leads import consumers
from leads.main import create_app
from leads.settings import LeadsSettings

pytest_plugins = ["crm_platform.testing"]


def _headers(role: str, username: str) -> dict[str, str]:
    # Imported here, not at the top: pytest registers crm_platform.testing as a plugin
    # (assertion rewriting) only if this conftest has not imported it first.
    from crm_platform.testing import auth_headers

    return auth_headers([role], username)


# Test modules are imported in importlib mode and cannot import this file: the
# helpers reach them as methods of the ``leads`` fixture.
@dataclass
class Leads:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: ServiceRuntime
    settings: ServiceSettings

    @staticmethod
    def unique_email(prefix: str = "lead") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"

    async def capture(self, email: str | None = None, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": "Ada Lovelace",
            "email": email or self.unique_email(),
            "company": "Engines",
            "source_channel": "webinar",
            "campaign": "q1",
            "consent": {"marketing_email": True},
        }
        body.update(fields)
        r = await self.client.post("/leads", json=body, headers=_headers("marketing", "mia"))
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    async def behave(self, lead_id: str, *behaviours: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for b in behaviours:
            # Each call is a distinct occurrence (identical content without a key would be
            # taken as a retry: see the leads README, "Safe retries").
            headers = {**_headers("marketing", "mia"), "Idempotency-Key": uuid.uuid4().hex}
            r = await self.client.post(f"/leads/{lead_id}/behaviours", json={"behaviour": b}, headers=headers)
            assert r.status_code == 201, r.text
            body = r.json()
        return body

    async def lead(self, lead_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/leads/{lead_id}", headers=_headers("sales_manager", "sam"))
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def qualified_lead(self, **fields: Any) -> dict[str, Any]:
        lead = await self.capture(**fields)
        out = await self.behave(lead["lead"]["id"], "form_submit", "trial_signup")
        assert out["qualified_now"], out
        return dict(out["lead"])


@pytest.fixture(scope="module")
def leads_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    # A fresh database and a group of its own, positioned at the topics' end (see ``leads``).
    from crm_platform.testing import isolated_settings

    return isolated_settings(LeadsSettings, "leads", kafka_bootstrap, mongodb_uri)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def leads(leads_settings: ServiceSettings) -> AsyncIterator[Leads]:
    from crm_platform.testing import running_app, start_group_at_end

    # The test broker is shared: the module's group starts where the topics end now and
    # sees only what is produced from here on (the service name stays "leads").
    await start_group_at_end(
        leads_settings.kafka_bootstrap_servers, leads_settings.group_id, consumers.TOPICS
    )
    app = create_app(leads_settings)
    async with running_app(app) as client:
        yield Leads(app, client, app.state.runtime, leads_settings)


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times FastAPI solved a request's dependencies (the lean routes,
    leads.api.capture_route, answer without it)."""
    calls: list[int] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return calls
