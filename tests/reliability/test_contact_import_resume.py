"""A contact import survives the sales process being killed mid-import: nothing doubled, nothing
lost (issue 9; the same machinery as marketing's lead imports, ``test_import_resume.py``).

Sales and the gateway run as processes on the real broker and mongod. A generated CSV (good
rows, rows repeating an email of the file or of a stored contact, bad rows) is uploaded
through the gateway as a stream; once the worker has committed some batches the sales process
is SIGKILLed and started again. Its job's lease expires, the restarted worker claims the job
and resumes at the checkpoint stored with the last batch. Then: every row is counted once
(read = rows, rejected = the bad rows exactly, listed in the error report by row number), every
email is one contact (a row imported twice would be refused by the unique email index and fail
the batch, or count as a second merge), and each new contact has exactly one
``sales.contact_created`` in the outbox.
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
from crm_platform.testing import auth_headers, idle_backoff_ms, until
from pymongo import MongoClient
from pymongo.database import Database

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
ROWS = 12_000
REP = auth_headers(["sales_rep"], "rita")


@pytest.fixture(scope="module")
def platform(crm_infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000"))
    gateway = int(os.environ.get("CRM_E2E_GATEWAY_PORT", "18080"))
    p = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        Path(os.environ.get("CRM_E2E_LOGDIR", tmp_path_factory.mktemp("contact-import-logs"))),
        gateway_port=int(os.environ.get("CRM_CONTACT_IMPORT_GATEWAY_PORT", str(gateway + 40))),
        service_port_base=int(os.environ.get("CRM_CONTACT_IMPORT_SERVICE_PORT_BASE", str(base + 40))),
        db_prefix=f"cimp_{RUN}_",
        group_suffix=f"-cimp-{RUN}",
        only=("sales", "gateway"),
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
        # Small batches and a short lease: several checkpoints before the kill, a quick takeover.
        extra_env={
            "CRM_IMPORT_BATCH_ROWS": "400",
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
    writer.writerow(["Email", "Name", "Phone"])
    per_email: dict[str, int] = {}
    bad: list[int] = []
    for row in range(1, ROWS + 1):
        if row % 97 == 0:
            writer.writerow([f"broken-{row}", f"Bad {row}", ""])  # not an email
            bad.append(row)
            continue
        if row % 89 == 0:
            writer.writerow([f"r{row}-{RUN}@import.example", "", ""])  # no name
            bad.append(row)
            continue
        email = known[(row // 50) % len(known)] if row % 50 == 0 else f"r{row % 9_000}-{RUN}@import.example"
        writer.writerow([email, f"Person {row}", f"+1 {row}"])
        per_email[email] = per_email.get(email, 0) + 1
    return out.getvalue().encode(), per_email, bad


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_a_contact_import_killed_midway_resumes_with_nothing_doubled_or_lost(
    platform: Platform, crm_infra: Any
) -> None:
    gw = platform.url("gateway")
    with httpx.Client(base_url=gw, timeout=60) as client:
        known = []
        for i in range(5):
            email = f"known{i}-{RUN}@import.example"
            body = {"name": f"Known {i}", "email": email, "source": "referral"}
            r = client.post("/api/sales/contacts", json=body, headers=REP)
            assert r.status_code == 201, r.text
            known.append(email)
        data, per_email, bad = generated(known)
        mapping = {"Email": "email", "Name": "name", "Phone": "phone"}
        r = client.post(
            "/api/sales/contacts/imports", json={"format": "csv", "mapping": mapping}, headers=REP
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        headers = {**REP, "Content-Type": "text/csv"}
        r = client.put(f"/api/sales/contacts/imports/{job_id}/file", content=pieces(data), headers=headers)
        assert r.status_code == 202, r.text
        assert r.json()["progress"]["bytes_total"] == len(data)

        def job() -> dict[str, Any]:
            return dict(client.get(f"/api/sales/contacts/imports/{job_id}", headers=REP).json())

        def some_batches() -> dict[str, Any] | None:
            j = job()
            return j if j["progress"]["read"] >= 800 else None

        def ended() -> dict[str, Any] | None:
            j = job()
            return j if j["state"] in ("completed", "failed") else None

        at_kill = until(some_batches, 120, "some batches")
        platform.stop(("sales",), sig=signal.SIGKILL)
        assert at_kill["state"] == "running", f"the import ended before the kill: {at_kill}"
        platform.start(("sales",))
        platform.wait_ready(timeout=90, names=("sales",))

        done = until(ended, 300, "the import")
        assert done["state"] == "completed", done
        p = done["progress"]
        assert p["read"] == ROWS, p
        assert p["rejected"] == len(bad), p
        assert p["accepted"] == ROWS - len(bad), p
        new_people = len(per_email) - len(known)
        assert p["merged"] == (ROWS - len(bad)) - new_people, p

        report = client.get(f"/api/sales/contacts/imports/{job_id}/errors", headers=REP)
        assert report.status_code == 200
        assert report.headers["content-type"].startswith("text/csv")
        rows = [int(x["row"]) for x in csv.DictReader(io.StringIO(report.text))]
        assert rows == bad, "each rejected row once, in file order"

    db: Database[dict[str, Any]] = MongoClient(crm_infra.mongodb_uri)[f"cimp_{RUN}_sales"]
    try:
        stored = list(db["contacts"].find({"email": {"$in": list(per_email)}}))
        assert sorted(d["email"] for d in stored) == sorted(per_email), "one contact per valid email"
        ids = [d["_id"] for d in stored if d["email"] not in known]
        assert len(ids) == new_people
        events = db["outbox"].count_documents({"event_type": "sales.contact_created", "key": {"$in": ids}})
        assert events == new_people, "one sales.contact_created per new contact"
    finally:
        db.client.close()
