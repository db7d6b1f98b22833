"""`make bench`'s import and export phase (issue 9): rows/s through the gateway, end to end.

A generated CSV (``BENCH_IMPORT_ROWS`` rows: about 1% bad rows, about 5% repeating an
email earlier in the file) is uploaded through the gateway as a stream, and the import is
timed from the first byte sent to the job's ``completed`` (every row validated, merged or
stored, its ``lead.captured`` in the outbox, the error report written). Then every lead is
exported through the gateway (``GET /api/leads/leads/export``) and the CSV rows counted as
they stream in. Only leads and the gateway run (the other departments take no part); the
broker and mongod are fresh. CPU per row per process is read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from crm_platform.devinfra.launcher import Platform
from crm_platform.testing import auth_headers
from profiling import profiled
from scenarios import say
from system import (
    RssSampler,
    cpu_ms_per_op,
    cpu_snapshot,
    infra_pids,
    load_average,
    mongo_counters,
    per_op,
    sched_snapshot,
    time_shares,
)

MAPPING = {"Email": "email", "Name": "name", "Company": "company", "Opt-in": "marketing_email"}


def generated_rows(rows: int, run: str) -> tuple[AsyncIterator[bytes], int]:
    """The file as a stream of ~64 KiB pieces (never whole in memory), and its bad rows' count."""
    bad = sum(1 for r in range(1, rows + 1) if r % 100 == 0)

    async def pieces() -> AsyncIterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["Email", "Name", "Company", "Opt-in"])
        for row in range(1, rows + 1):
            if row % 100 == 0:
                writer.writerow([f"broken-{row}", f"Bad {row}", "X", "yes"])  # rejected: not an email
            else:
                n = row - 7 if row % 20 == 0 else row  # every 20th repeats an earlier person: merged
                writer.writerow([f"p{n}-{run}@bench.example", f"Person {n}", f"Company {n % 500}", row % 2])
            if out.tell() >= 65536:
                yield out.getvalue().encode()
                out.seek(0)
                out.truncate()
        yield out.getvalue().encode()

    return pieces(), bad


async def _wait_done(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str], limit: float
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = (await client.get(f"/api/leads/imports/{job_id}", headers=headers)).json()
        if job["state"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.25)
    return job


async def import_and_export(platform: Platform, rows: int, home: Path, profile_dir: Path) -> dict[str, Any]:
    """Why long: one phase told in order (upload, import, report, export), each with its figures."""
    marketing = auth_headers(["marketing"], "bench")
    everyone = {**{n: p.pid for n, p in platform.procs.items()}, **infra_pids(home)}
    out: dict[str, Any] = {"rows": rows, "load_average": {"start": load_average()}}
    async with httpx.AsyncClient(base_url=platform.url("gateway"), timeout=600) as client:
        r = await client.post(
            "/api/leads/imports", json={"format": "csv", "mapping": MAPPING}, headers=marketing
        )
        r.raise_for_status()
        job_id = r.json()["id"]
        body, bad = generated_rows(rows, job_id[:8])
        say(f"import: {rows} rows ({bad} bad) through the gateway ...")
        ops_before = await mongo_counters(platform.mongodb_uri)
        sched_before = sched_snapshot(everyone)
        before = cpu_snapshot(everyone)
        started = time.perf_counter()
        with (
            RssSampler({n: p.pid for n, p in platform.procs.items()}) as rss,
            profiled("import", {n: p.pid for n, p in platform.procs.items()}, profile_dir),
        ):
            headers = {**marketing, "Content-Type": "text/csv"}
            r = await client.put(f"/api/leads/imports/{job_id}/file", content=body, headers=headers)
            r.raise_for_status()
            uploaded = time.perf_counter() - started
            job = await _wait_done(client, job_id, marketing, limit=max(600.0, rows / 50))
        elapsed = time.perf_counter() - started
        out["cpu_ms_per_row"] = cpu_ms_per_op(before, cpu_snapshot(everyone), rows)
        out["time_shares"] = time_shares(sched_before, sched_snapshot(everyone), elapsed)
        # Per 1,000 rows (one batch): round trips, commits, aborted attempts, write conflicts.
        out["mongod_ops_per_1000_rows"] = per_op(
            ops_before, await mongo_counters(platform.mongodb_uri), rows // 1000
        )
        out["rss_mb"] = {k: round(v, 1) for k, v in rss.peak.items()}
        p = job.get("progress", {})
        out["import"] = {
            "state": job.get("state"),
            "seconds": round(elapsed, 2),
            "upload_seconds": round(uploaded, 2),
            "rate": round(p.get("read", 0) / elapsed, 1) if elapsed else 0.0,
            "worker_rate": p.get("rows_per_second"),
            "read": p.get("read"),
            "accepted": p.get("accepted"),
            "merged": p.get("merged"),
            "rejected": p.get("rejected"),
            "expected_rejected": bad,
            "bytes": p.get("bytes_total"),
        }
        out["load_average"]["import"] = load_average()
        say(
            f"  {out['import']['rate']:.0f} rows/s end to end ({elapsed:.1f} s; upload {uploaded:.1f} s), "
            f"{p.get('accepted')} accepted ({p.get('merged')} merged), {p.get('rejected')} rejected "
            f"(load average {out['load_average']['import']}); CPU per row (ms): {out['cpu_ms_per_row']}"
        )
        say(f"  mongod operations per 1,000 rows: {out['mongod_ops_per_1000_rows']}")
        say(f"  share of the import's wall time on a core / waiting for one: {out['time_shares']}")
        report = await client.get(f"/api/leads/imports/{job_id}/errors", headers=marketing)
        out["import"]["error_report_rows"] = max(len(report.text.splitlines()) - 1, 0)
        out["export"] = await _export(client, marketing)
        out["load_average"]["export"] = load_average()
        e = out["export"]
        say(
            f"export: {e['rate']:.0f} rows/s ({e['rows']} rows, {e['mb']} MB in {e['seconds']} s; "
            f"load average {out['load_average']['export']})"
        )
    return out


async def _export(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    lines, size = 0, 0
    async with client.stream("GET", "/api/leads/leads/export", headers=headers) as r:
        r.raise_for_status()
        async for piece in r.aiter_bytes():
            lines += piece.count(b"\n")
            size += len(piece)
    elapsed = time.perf_counter() - started
    rows = max(lines - 1, 0)
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rate": round(rows / elapsed, 1) if elapsed else 0.0,
        "mb": round(size / 1e6, 1),
    }


async def _alone() -> None:
    """``python bench/imports.py``: this phase alone (fresh infra on the bench ports), for profiling."""
    import json

    import run_bench
    from crm_platform.testing import idle_backoff_ms

    args = run_bench.parse_args()
    infra = run_bench.fresh_infra(args)
    try:
        out = await run_bench.bench_imports(
            args, infra.kafka_bootstrap, infra.mongodb_uri, idle_backoff_ms(infra)
        )
        print(json.dumps(out, indent=2))
    finally:
        infra.stop()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    asyncio.run(_alone())
