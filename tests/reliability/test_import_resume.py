"""An import survives the leads process being killed mid-import: nothing doubled, nothing lost.

Leads and the gateway run as processes on the real broker and mongod. A generated CSV
(good rows, rows repeating an email of the file or of a stored lead, bad rows) is
uploaded through the gateway as a stream; once the worker has committed some batches
the leads process is SIGKILLed and started again. Its job's lease expires, the restarted
worker claims the job, folds the batch records committed past the job's checkpoint (two
batches run in flight: the kill may fall between a batch's commit and its fold) and
resumes there. Then:
every row is counted once (read = rows, rejected = the bad rows exactly, listed in the
error report by row number), every person is one lead whose touches equal its rows in
the file (a row imported twice would add a touch), and each accepted row has exactly
one ``lead.captured`` in the outbox.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_platform.devinfra.launcher import Platform
from crm_platform.mongo import outbox_events_pipeline
from crm_platform.testing import auth_headers, idle_backoff_ms, until
from pymongo import MongoClient
from pymongo.database import Database

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
ROWS = 20_000
MARKETING = auth_headers(["marketing"], "mia")


@pytest.fixture(scope="module")
def platform(crm_infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000"))
    gateway = int(os.environ.get("CRM_E2E_GATEWAY_PORT", "18080"))
    p = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        Path(os.environ.get("CRM_E2E_LOGDIR", tmp_path_factory.mktemp("import-logs"))),
        gateway_port=int(os.environ.get("CRM_IMPORT_GATEWAY_PORT", str(gateway + 30))),
        service_port_base=int(os.environ.get("CRM_IMPORT_SERVICE_PORT_BASE", str(base + 30))),
        db_prefix=f"imp_{RUN}_",
        group_suffix=f"-imp-{RUN}",
        only=("leads", "gateway"),
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
        # Small batches and a short lease: several checkpoints before the kill, a quick takeover;
        # two batches in flight, so the kill can land between a commit and its fold.
        extra_env={
            "CRM_IMPORT_BATCH_ROWS": "500",
            "CRM_IMPORT_IN_FLIGHT": "2",
            "CRM_IMPORT_LEASE_SECONDS": "3",
            "CRM_IMPORT_POLL_SECONDS": "0.5",
        },
    )
    p.start()
    try:
        p.wait_ready(timeout=90)
        yield p
    finally:
        p.stop()


def generated(known: list[str]) -> tuple[bytes, dict[str, int], list[int]]:
    """The file, how many rows each valid email has in it, and the bad rows' numbers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Email", "Name", "Company", "Opt-in"])
    per_email: dict[str, int] = {}
    bad: list[int] = []
    for row in range(1, ROWS + 1):
        if row % 97 == 0:
            writer.writerow([f"broken-{row}", f"Bad {row}", "X", "yes"])  # not an email
            bad.append(row)
            continue
        if row % 89 == 0:
            writer.writerow([f"r{row}-{RUN}@import.example", f"P {row}", "X", "maybe"])  # not a flag
            bad.append(row)
            continue
        email = known[(row // 50) % len(known)] if row % 50 == 0 else f"r{row % 16_000}-{RUN}@import.example"
        writer.writerow([email, f"Person {row}", f"Company {row % 300}", "yes" if row % 2 else "no"])
        per_email[email] = per_email.get(email, 0) + 1
    return out.getvalue().encode(), per_email, bad


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_an_import_killed_midway_resumes_with_nothing_doubled_or_lost(
    platform: Platform, crm_infra: Any
) -> None:
    gw = platform.url("gateway")
    with httpx.Client(base_url=gw, timeout=60) as client:
        known = []
        for i in range(5):
            email = f"known{i}-{RUN}@import.example"
            body = {
                "name": f"Known {i}",
                "email": email,
                "source_channel": "webinar",
                "consent": {"marketing_email": True},
            }
            assert client.post("/api/leads/leads", json=body, headers=MARKETING).status_code == 201
            known.append(email)
        data, per_email, bad = generated(known)
        mapping = {"Email": "email", "Name": "name", "Company": "company", "Opt-in": "marketing_email"}
        r = client.post("/api/leads/imports", json={"format": "csv", "mapping": mapping}, headers=MARKETING)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        headers = {**MARKETING, "Content-Type": "text/csv"}
        r = client.put(f"/api/leads/imports/{job_id}/file", content=pieces(data), headers=headers)
        assert r.status_code == 202, r.text
        assert r.json()["progress"]["bytes_total"] == len(data)

        def job() -> dict[str, Any]:
            return dict(client.get(f"/api/leads/imports/{job_id}", headers=MARKETING).json())

        def some_batches() -> dict[str, Any] | None:
            j = job()
            return j if j["progress"]["read"] >= 1000 else None

        def ended() -> dict[str, Any] | None:
            j = job()
            return j if j["state"] in ("completed", "failed") else None

        at_kill = until(some_batches, 120, "some batches")
        platform.stop(("leads",), sig=signal.SIGKILL)
        assert at_kill["state"] == "running", f"the import ended before the kill: {at_kill}"
        platform.start(("leads",))
        platform.wait_ready(timeout=90, names=("leads",))

        done = until(ended, 300, "the import")
        assert done["state"] == "completed", done
        p = done["progress"]
        assert p["read"] == ROWS, p
        assert p["rejected"] == len(bad), p
        assert p["accepted"] == ROWS - len(bad), p
        assert p["merged"] == (ROWS - len(bad)) - (len(per_email) - len(known)), p

        report = client.get(f"/api/leads/imports/{job_id}/errors", headers=MARKETING)
        assert report.status_code == 200
        assert report.headers["content-type"].startswith("text/csv")
        rows = [int(x["row"]) for x in csv.DictReader(io.StringIO(report.text))]
        assert rows == bad, "each rejected row once, in file order"

    db: Database[dict[str, Any]] = MongoClient(crm_infra.mongodb_uri)[f"imp_{RUN}_leads"]
    try:
        stored = {d["email"]: d for d in db["leads"].find({"email": {"$in": list(per_email)}})}
        assert set(stored) == set(per_email), "one lead per valid email: nothing lost"
        expected = {e: n + (e in known) for e, n in per_email.items()}
        doubled = {
            e: (d["touch_count"], expected[e]) for e, d in stored.items() if d["touch_count"] != expected[e]
        }
        assert not doubled, f"touches (stored, expected) differ: {list(doubled.items())[:5]}"
        ids = [d["_id"] for d in stored.values()]
        # Import batches store their events in batch rows (crm_platform.mongo.outbox_rows): count events.
        match = {"event_type": "lead.captured", "key": {"$in": ids}}
        events = len(list(db["outbox"].aggregate(outbox_events_pipeline(match))))
        assert events == ROWS - len(bad) + len(known), "one lead.captured per accepted row (+ the 5 captures)"
    finally:
        db.client.close()
