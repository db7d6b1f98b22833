"""`make bench`: each console page's server time with the demo data (issue 8: <= 200 ms).

The demo data (`crm_platform.devinfra.journey.seed_demo`, what `make run` loads) is seeded
through the gateway; then each demo user logs in through the console's form and opens their
pages, a few times each. The figure is the console's own ``Server-Timing: app;dur=`` (the
page's server time, its API calls through the gateway included), not the client's round
trip. Printed beside the 200 ms bound; no test asserts on it.
"""

from __future__ import annotations

import asyncio
import re
import statistics
from typing import Any

import httpx
from crm_platform.devinfra.journey import ADMIN, DEMO_USERS, Gateway, seed_demo

BOUND_MS = 200.0
TIMING = re.compile(r"app;dur=([0-9.]+)")
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
# Each role's pages, first page first ({lead}, {opp}, {account}: ids from the demo data).
PAGES: dict[str, tuple[str, ...]] = {
    "maria": (
        "/leads",
        "/leads?search=demo&min_score=10&sort=score",
        "/leads/new",
        "/leads/{lead}",
        "/scoring",
        "/kpis/marketing",
        "/action-items",
    ),
    "mark": ("/leads", "/scoring", "/action-items"),
    "sam": ("/inbox", "/pipeline", "/team", "/team/stages", "/forecast", "/dashboard", "/action-items"),
    "rita": ("/inbox", "/pipeline", "/opportunities/{opp}", "/forecast"),
    "sven": ("/tickets", "/tickets/new", "/accounts", "/churn-warnings", "/health-rules", "/kpis/service"),
    "cora": (
        "/accounts",
        "/accounts/{account}",
        "/renewals",
        "/checkins",
        "/commitment-reviews",
        "/action-items",
    ),
    "lena": ("/accounts", "/accounts/{account}", "/churn-warnings", "/commitment-reviews"),
    "ana": ("/dashboard", "/dashboard?handoff=deal-won&days=90", "/kpis", "/forecast"),
    "eve": ("/kpis", "/kpis/service", "/kpis/marketing"),
    "aude": ("/audit-log", "/audit-log?service=sales"),
    "admin": ("/admin/users", "/customers/{lead}"),
}


def demo_ids(gateway_url: str) -> dict[str, str]:
    """A lead, an opportunity and an account of the demo data, for the record pages."""
    gw = Gateway(gateway_url)
    try:
        gw.login(*ADMIN)
        lead = gw.get("admin", "/api/leads/leads?limit=1")["items"][0]["id"]
        opp = gw.get("admin", "/api/sales/opportunities?limit=1")["items"][0]["id"]
        account = gw.get("admin", "/api/service-desk/accounts?limit=1")["items"][0]["account_id"]
        return {"lead": lead, "opp": opp, "account": account}
    finally:
        gw.close()


async def _login(client: httpx.AsyncClient, username: str, password: str) -> None:
    page = await client.get("/login")
    found = CSRF.search(page.text)
    assert found, "no CSRF token on the login page"
    form = {"csrf_token": found.group(1), "username": username, "password": password}
    r = await client.post("/login", data=form)
    if r.status_code != 303:
        raise RuntimeError(f"{username} could not log in to the console: {r.status_code}")


async def _time_page(client: httpx.AsyncClient, path: str, repeat: int) -> dict[str, Any]:
    await client.get(path)  # warm: the first call of a page fills the connection pools
    times, statuses = [], set()
    for _ in range(repeat):
        r = await client.get(path)
        statuses.add(r.status_code)
        found = TIMING.search(r.headers.get("server-timing", ""))
        if found:
            times.append(float(found.group(1)))
    return {
        "status": sorted(statuses),
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "max_ms": round(max(times), 1) if times else None,
    }


async def page_timings(gateway_url: str, repeat: int = 5) -> list[dict[str, Any]]:
    """Seed the demo data, then every role's pages: one row per (user, page)."""
    credentials = await asyncio.to_thread(seed_demo, gateway_url, lambda m: print(f"    {m}", flush=True))
    ids = await asyncio.to_thread(demo_ids, gateway_url)
    passwords = {**credentials, ADMIN[0]: ADMIN[1], **{u: p for u, (p, _, _) in DEMO_USERS.items()}}
    rows = []
    for username, paths in PAGES.items():
        async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
            await _login(client, username, passwords[username])
            for template in paths:
                path = template.format(**ids)
                rows.append({"user": username, "page": template, **await _time_page(client, path, repeat)})
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as printed lines, with the worst page and how many are within the bound."""
    lines = ["console pages' server time (Server-Timing app;dur, demo data; bound 200 ms):"]
    for r in rows:
        within = r["max_ms"] is not None and r["max_ms"] <= BOUND_MS
        lines.append(
            f"  {r['user']:<6} {r['page']:<28} p50 {r['p50_ms']!s:>7} ms  max {r['max_ms']!s:>7} ms  "
            f"HTTP {','.join(map(str, r['status']))}  {'ok' if within else 'OVER'}"
        )
    timed = [r for r in rows if r["max_ms"] is not None]
    if timed:
        worst = max(timed, key=lambda r: r["max_ms"])
        met = sum(1 for r in timed if r["max_ms"] <= BOUND_MS)
        slowest = f"{worst['page']} ({worst['user']}) {worst['max_ms']} ms"
        lines.append(f"  {met} of {len(timed)} pages within 200 ms; slowest {slowest}")
    return lines


def slowest_ms(rows: list[dict[str, Any]]) -> tuple[str, float] | None:
    timed = [r for r in rows if r["max_ms"] is not None]
    if not timed:
        return None
    worst = max(timed, key=lambda r: r["max_ms"])
    return f"{worst['page']} ({worst['user']})", float(worst["max_ms"])
