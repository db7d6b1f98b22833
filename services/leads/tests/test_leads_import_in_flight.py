"""Two import batches in flight (CRM_IMPORT_IN_FLIGHT=2) on the real mongod and broker.

Batch N+1's transaction runs beside batch N's; they still commit in file order, a batch that
repeats an email of the batch in flight waits for it (the repeat merges into the lead it
inserted), a batch beside one that fails is not kept, and a worker that stops between a
batch's commit and its fold into the job leaves batch records that the next claim folds in:
in every case each row is counted and stored once (crm_platform.imports.worker).
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pytest
from crm_platform.imports import store as import_store
from crm_platform.imports.domain import Checkpoint
from crm_platform.mongo import outbox_events_pipeline
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers, eventually
from leads import handlers

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

MARKETING = auth_headers(["marketing"], "mia")
CSV_TYPE = {**MARKETING, "Content-Type": "text/csv"}
BATCH = 10


@pytest.fixture(scope="module")
def leads_settings(kafka_bootstrap: str, mongodb_uri: str) -> ServiceSettings:
    from crm_platform.testing import isolated_settings
    from leads.settings import LeadsSettings

    return isolated_settings(
        LeadsSettings,
        "leads",
        kafka_bootstrap,
        mongodb_uri,
        CRM_IMPORT_BATCH_ROWS=str(BATCH),
        CRM_IMPORT_IN_FLIGHT="2",
        CRM_IMPORT_POLL_SECONDS="0.1",
    )


@dataclass
class Spy:
    """What ``handlers.import_batch`` saw: each call's start and end, in the order they happened."""

    log: list[tuple[str, int]] = field(default_factory=list)  # ("start" | "end" | "failed", row)
    started: dict[int, asyncio.Event] = field(default_factory=dict)

    def event(self, row: int) -> asyncio.Event:
        return self.started.setdefault(row, asyncio.Event())

    def overlapped(self) -> list[int]:
        """The batches (by first row) that started while the batch before them had not ended."""
        open_: set[int] = set()
        beside = []
        for what, row in self.log:
            if what == "start":
                if open_:
                    beside.append(row)
                open_.add(row)
            else:
                open_.discard(row)
        return beside


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    seen = Spy()
    real = handlers.import_batch

    async def watched(uow: Any, job_id: str, expected: Checkpoint, *args: Any) -> Any:
        seen.log.append(("start", expected.row))
        seen.event(expected.row).set()
        try:
            counts = await real(uow, job_id, expected, *args)
        except BaseException:
            seen.log.append(("failed", expected.row))
            raise
        seen.log.append(("end", expected.row))
        return counts

    monkeypatch.setattr(handlers, "import_batch", watched)
    return seen


def file_of(rows: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "name"])
    for i, email in enumerate(rows):
        writer.writerow([email, f"Person {i}"])
    return out.getvalue().encode()


async def run_import(leads: Leads, data: bytes) -> dict[str, Any]:
    r = await leads.client.post("/imports", json={"format": "csv"}, headers=MARKETING)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = await leads.client.put(f"/imports/{job_id}/file", content=data, headers=CSV_TYPE)
    assert r.status_code == 202, r.text

    async def ended() -> dict[str, Any] | None:
        job = (await leads.client.get(f"/imports/{job_id}", headers=MARKETING)).json()
        return job if job["state"] in ("completed", "failed") else None

    return dict(await eventually(ended, timeout=60, what="the import to end"))


async def each_row_once(leads: Leads, emails: list[str]) -> None:
    """One lead per email, touched once per row naming it, and one lead.captured per row."""
    db = leads.runtime.db
    stored = {d["email"]: d async for d in db["leads"].find({"email": {"$in": emails}})}
    assert set(stored) == set(emails), "one lead per email: nothing lost"
    touches = {e: d["touch_count"] for e, d in stored.items()}
    assert touches == {e: emails.count(e) for e in set(emails)}, "no row stored twice"
    match = {"event_type": "lead.captured", "key": {"$in": [d["_id"] for d in stored.values()]}}
    events = [e async for e in await db["outbox"].aggregate(outbox_events_pipeline(match))]
    assert len(events) == len(emails), "one lead.captured per row"


async def batch_records_gone(leads: Leads, job_id: str) -> None:
    """The batch records go with the finished import: the worker drops them (with the file's
    chunks) right after marking the job completed, so a reader may see it completed first."""

    async def gone() -> bool:
        return await leads.runtime.db[import_store.IMPORT_BATCHES].count_documents({"job_id": job_id}) == 0

    await eventually(gone, what="the finished import's batch records to go")


def rows_of(tag: str, n: int, start: int = 0) -> list[str]:
    return [f"p{i}-{tag}@example.com" for i in range(start, start + n)]


async def test_batches_run_side_by_side_commit_in_order_and_a_repeated_email_waits(
    leads: Leads, spy: Spy
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Six batches of 10; the third repeats two emails of the second: it waits for it and merges.
    emails = rows_of(tag, 20) + rows_of(tag, 8, 20) + [f"p12-{tag}@example.com", f"p15-{tag}@example.com"]
    emails += rows_of(tag, 30, 28)
    job = await run_import(leads, file_of(emails))

    assert job["state"] == "completed", job
    p = job["progress"]
    assert (p["read"], p["accepted"], p["merged"], p["rejected"]) == (60, 60, 2, 0)
    assert [row for what, row in spy.log if what == "end"] == [0, 10, 20, 30, 40, 50], "file order"
    beside = spy.overlapped()
    assert 20 not in beside, "the batch repeating an email of the one in flight waited for it"
    assert beside, "some batches ran beside the one before them"
    await each_row_once(leads, emails)
    await batch_records_gone(leads, job["id"])


async def test_a_batch_beside_one_that_fails_is_not_kept_and_the_import_resumes(
    leads: Leads, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = import_store.MongoImports.add_batch
    failed: list[int] = []

    async def fails_once(self: Any, job_id: str, at: Checkpoint, *args: Any) -> None:
        if at.row == 10 and not failed:
            # The batch after this one is in flight beside it before this one fails.
            await asyncio.wait_for(spy.event(20).wait(), timeout=30)
            failed.append(at.row)
            raise RuntimeError("storage refused the batch")
        await real(self, job_id, at, *args)

    monkeypatch.setattr(import_store.MongoImports, "add_batch", fails_once)
    tag = uuid.uuid4().hex[:8]
    emails = rows_of(tag, 40)
    job = await run_import(leads, file_of(emails))

    assert job["state"] == "completed", job
    assert failed == [10]
    assert ("failed", 20) in spy.log, "the batch beside the failed one did not commit"
    p = job["progress"]
    assert (p["read"], p["accepted"], p["merged"], p["rejected"]) == (40, 40, 0, 0)
    await each_row_once(leads, emails)


async def test_batches_committed_but_not_folded_in_are_folded_by_the_next_claim(
    leads: Leads, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = import_store.fold_batch
    folds: list[int] = []

    async def stops_at_the_second(db: Any, job_id: str, owner: str, at: Checkpoint, *args: Any) -> bool:
        folds.append(at.row)
        if len(folds) == 2:
            # The worker stops here: the batch from row 10 is committed, not folded into the job
            # (and the one after it may be committed too).
            await asyncio.wait_for(spy.event(20).wait(), timeout=30)
            raise RuntimeError("the worker stopped")
        return bool(await real(db, job_id, owner, at, *args))

    monkeypatch.setattr(import_store, "fold_batch", stops_at_the_second)
    tag = uuid.uuid4().hex[:8]
    emails = rows_of(tag, 50)
    job = await run_import(leads, file_of(emails))

    assert job["state"] == "completed", job
    assert folds.count(10) == 2, "the next claim folded the batch the first left committed"
    assert [row for what, row in spy.log if what == "end"].count(10) == 1, "and did not import it again"
    p = job["progress"]
    assert (p["read"], p["accepted"], p["merged"], p["rejected"]) == (50, 50, 0, 0)
    await each_row_once(leads, emails)
