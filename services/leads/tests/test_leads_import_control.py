"""An import's control flow on the real mongod and broker (issue 9): processing that keeps
failing is given up after CRM_IMPORT_MAX_ATTEMPTS tries with the reason in its status (not
retried forever), and a second upload of the same import's file while one is storing it is
refused with 409."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import pytest
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers, eventually
from leads import handlers
from leads.settings import LeadsSettings

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

MARKETING = auth_headers(["marketing"], "mia")
CSV_TYPE = {**MARKETING, "Content-Type": "text/csv"}
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def leads_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings

    return isolated_settings(
        LeadsSettings,
        "leads",
        kafka_bootstrap,
        mongodb_uri,
        CRM_IMPORT_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        CRM_IMPORT_POLL_SECONDS="0.1",
    )


async def _job(leads: Leads) -> str:
    r = await leads.client.post("/imports", json={"format": "csv"}, headers=MARKETING)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_an_import_that_keeps_failing_is_failed_with_the_reason(
    leads: Leads, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[str] = []

    async def broken(uow: Any, job_id: str, *args: Any) -> Any:
        tries.append(job_id)
        raise RuntimeError(f"storage refused batch {len(tries)}")

    monkeypatch.setattr(handlers, "import_batch", broken)
    job_id = await _job(leads)
    r = await leads.client.put(
        f"/imports/{job_id}/file", content=b"email,name\na@example.com,A\n", headers=CSV_TYPE
    )
    assert r.status_code == 202, r.text

    async def failed() -> dict[str, Any] | None:
        job = (await leads.client.get(f"/imports/{job_id}", headers=MARKETING)).json()
        return job if job["state"] == "failed" else None

    job = await eventually(failed, what="the import given up")
    assert tries == [job_id] * MAX_ATTEMPTS, "tried exactly the limit, then no more"
    assert job["error"].startswith(f"gave up after {MAX_ATTEMPTS} attempts in a row failed: RuntimeError")
    assert "storage refused batch 3" in job["error"]
    assert job["last_error"] == f"RuntimeError: storage refused batch {MAX_ATTEMPTS}"
    assert job["attempts"] == MAX_ATTEMPTS


async def test_a_second_upload_while_one_is_storing_the_file_is_refused(leads: Leads) -> None:
    job_id = await _job(leads)
    first_started, let_first_finish = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"email,name\n"
        first_started.set()
        await let_first_finish.wait()
        yield b"slow@example.com,Slow\n"

    url = f"/imports/{job_id}/file"
    first = asyncio.create_task(leads.client.put(url, content=slow_body(), headers=CSV_TYPE))
    await asyncio.wait_for(first_started.wait(), 10)

    async def second_refused() -> Any:
        r = await leads.client.put(url, content=b"email,name\nfast@example.com,Fast\n", headers=CSV_TYPE)
        return r if r.status_code == 409 else None

    refused = await eventually(second_refused, what="the concurrent upload refused")
    assert "another upload of import" in refused.json()["message"]
    assert "one upload at a time" in refused.json()["message"]
    let_first_finish.set()
    r = await first
    assert r.status_code == 202, r.text
    job = (await leads.client.get(f"/imports/{job_id}", headers=MARKETING)).json()
    assert job["state"] in ("queued", "running", "completed"), job
    # Once stored, the import takes no other file (the state says why).
    again = await leads.client.put(url, content=b"email,name\nlate@example.com,Late\n", headers=CSV_TYPE)
    assert again.status_code == 409, again.text
    assert "its file was received already" in again.json()["message"]
