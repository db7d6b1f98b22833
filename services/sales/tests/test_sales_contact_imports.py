"""Contact imports (issue 9) on the real mongod and broker: the platform's import machinery
(``crm_platform.imports``) with sales' rows. A generated file with bad rows, repeated emails and
emails of stored contacts: every row counted once, the error report lists exactly the bad rows
with why, one contact per email (a known one merged, its empty fields filled, never a second),
one ``sales.contact_created`` per new contact; the owner follows ``POST /contacts``' rule; bad
mappings, content types and owners are refused naming why. (A killed sales process resuming an
import: ``tests/reliability/test_contact_import_resume.py``.)"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, TypeAlias

import pytest
from crm_platform.mongo import OUTBOX
from crm_platform.testing import eventually

pytestmark = pytest.mark.integration
Sales: TypeAlias = Any  # conftest.Sales

ROWS = 3000
MAPPING = {"E-mail": "email", "Full name": "name", "Tel": "phone", "Job": "role"}


def generated(tag: str, known: list[str]) -> tuple[bytes, dict[str, int], dict[int, str]]:
    """The file, how many rows each valid email has, and each bad row's number with a word of why."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["E-mail", "Full name", "Tel", "Job", "Ignored"])
    per_email: dict[str, int] = {}
    bad: dict[int, str] = {}
    for row in range(1, ROWS + 1):
        if row % 97 == 0:
            writer.writerow([f"broken-{row}", "Bad", "", "", "x"])
            bad[row] = "email"
            continue
        if row % 89 == 0:
            writer.writerow([f"n{row}-{tag}@imp.example", "", "", "", "x"])
            bad[row] = "name"
            continue
        if row % 83 == 0:
            writer.writerow([f"p{row}-{tag}@imp.example", "Long Phone", "9" * 60, "", "x"])
            bad[row] = "phone"
            continue
        email = known[row % len(known)] if row % 50 == 0 else f"c{row % 2500}-{tag}@imp.example"
        writer.writerow(
            [email.upper() if row % 7 == 0 else email, f"Person {row}", f"+33 {row}", "buyer", "x"]
        )
        per_email[email] = per_email.get(email, 0) + 1
    return out.getvalue().encode(), per_email, bad


async def _job(sales: Sales, job_id: str, rep: str) -> dict[str, Any]:
    r = await sales.client.get(f"/contacts/imports/{job_id}", headers=sales.rep(rep))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_file_with_bad_rows_and_known_people_imports_each_row_once(sales: Sales) -> None:
    tag, rep = sales.uid("t"), sales.uid("rep")
    known = []
    for i in range(3):
        email = f"known{i}-{tag}@imp.example"
        body = {"email": email, "name": f"Known {i}", "source": "referral"}
        r = await sales.client.post("/contacts", json=body, headers=sales.rep(rep))
        assert r.status_code == 201, r.text
        known.append(email)
    data, per_email, bad = generated(tag, known)
    r = await sales.client.post(
        "/contacts/imports", json={"format": "csv", "mapping": MAPPING}, headers=sales.rep(rep)
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    headers = {**sales.rep(rep), "Content-Type": "text/csv"}
    r = await sales.client.put(f"/contacts/imports/{job_id}/file", content=data, headers=headers)
    assert r.status_code == 202, r.text

    async def done() -> dict[str, Any] | None:
        job = await _job(sales, job_id, rep)
        return job if job["state"] in ("completed", "failed") else None

    job = await eventually(done, timeout=120, what="the contact import")
    assert job["state"] == "completed", job
    p = job["progress"]
    new_people = len(per_email) - len(known)
    assert (p["read"], p["rejected"], p["accepted"]) == (ROWS, len(bad), ROWS - len(bad)), p
    assert p["merged"] == (ROWS - len(bad)) - new_people, p

    report = await sales.client.get(f"/contacts/imports/{job_id}/errors", headers=sales.rep(rep))
    assert report.status_code == 200
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [int(x["row"]) for x in rows] == sorted(bad), "each rejected row once, in file order"
    for x in rows:
        assert bad[int(x["row"])] in x["reason"], x
        assert int(x["line"]) == int(x["row"]) + 1, "the header is line 1"

    db = sales.runtime.store.db
    stored = {d["email"]: d async for d in db["contacts"].find({"email": {"$in": list(per_email)}})}
    assert set(stored) == set(per_email), "one contact per email, whatever its case in the file"
    for email in known:
        assert stored[email]["name"].startswith("Known"), "a known contact keeps its filled fields"
        assert stored[email]["phone"] is not None, "and gets the empty ones from the file"
        assert stored[email]["source"] == "referral"
    imported = [d for e, d in stored.items() if e not in known]
    assert {(d["owner"], d["source"], d["import_id"]) for d in imported} == {(rep, "import", job_id)}
    ids = [d["_id"] for d in imported]
    events = await db[OUTBOX].count_documents({"event_type": "sales.contact_created", "key": {"$in": ids}})
    assert events == new_people, "one sales.contact_created per new contact, none per merge"


async def test_whose_book_and_bad_requests(sales: Sales) -> None:
    rep, other = sales.uid("rep"), sales.uid("rep")
    await sales.activate(other)
    r = await sales.client.post(
        "/contacts/imports", json={"format": "csv", "defaults": {"owner": other}}, headers=sales.rep(rep)
    )
    assert r.status_code == 403, "a rep imports into their own book"
    r = await sales.client.post(
        "/contacts/imports", json={"format": "jsonl", "defaults": {"owner": other}}, headers=sales.manager()
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    lines = [{"email": f"{sales.uid('j')}@imp.example", "name": "Jo"}, {"email": "nope", "name": "X"}]
    body = "\n".join(json.dumps(x) for x in lines).encode()
    url = f"/contacts/imports/{job_id}/file"
    r = await sales.client.put(url, content=body, headers={**sales.manager(), "Content-Type": "text/csv"})
    assert r.status_code == 415, "a JSON lines import takes a JSON lines content type"
    headers = {**sales.manager(), "Content-Type": "application/x-ndjson"}
    r = await sales.client.put(url, content=body, headers=headers)
    assert r.status_code == 202, r.text

    async def done() -> dict[str, Any] | None:
        job = await _job(sales, job_id, "mona")
        return job if job["state"] == "completed" else None

    job = await eventually(done, timeout=60, what="the JSON lines import")
    assert (job["progress"]["accepted"], job["progress"]["rejected"]) == (1, 1)
    stored = await sales.runtime.store.db["contacts"].find_one({"email": lines[0]["email"]})
    assert stored is not None
    assert stored["owner"] == other, "a manager names the active rep whose book it is"

    for mapping, why in (
        ({"Mail": "email"}, "required"),
        ({"Mail": "email", "N": "name", "X": "shoe"}, "body.mapping.X"),
    ):
        r = await sales.client.post(
            "/contacts/imports", json={"format": "csv", "mapping": mapping}, headers=sales.rep(rep)
        )
        assert r.status_code == 422, r.text
        assert why in r.text, r.text
    r = await sales.client.post(
        "/contacts/imports", json={"format": "csv"}, headers=sales.headers("analyst", "an")
    )
    assert r.status_code == 403
