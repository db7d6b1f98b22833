"""KPI pages and the audit log against a fake gateway: figures beside charts, roles, filters, export."""

from __future__ import annotations

import re

import httpx
import pytest
from console.api.audit import audit_query, merge_newest_first
from console.api.kpis import latency_rows, lead_rows, period_rows
from console.domain import pages


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def login(console: httpx.AsyncClient, username: str) -> None:
    page = await console.get("/login")
    form = {"csrf_token": csrf_of(page.text), "username": username, "password": f"{username}-pass"}
    r = await console.post("/login", data=form)
    assert r.status_code == 303, r.text


def test_period_rows_run_oldest_first_for_the_chosen_team() -> None:
    periods = [
        {
            "period": "2026-12",
            "teams": {"all": {"tickets": {"resolved": 7}}, "gold": {"tickets": {"resolved": 2}}},
        },
        {"period": "2026-11", "teams": {"all": {"tickets": {"resolved": 5}}}},
    ]
    assert [(r["period"], r["resolved"]) for r in period_rows(periods, "gold")] == [
        ("2026-11", 5),  # no figures for the team that period: the whole's
        ("2026-12", 2),
    ]


def test_net_retention_is_the_main_currencys() -> None:
    figures = {
        "renewals": {
            "revenue_retention": {
                "EUR": {"previous": 900, "net_retention": 1.2},
                "USD": {"previous": 100, "net_retention": 0.5},
            }
        }
    }
    assert period_rows([{"period": "p", "teams": {"all": figures}}], "all")[0]["net_retention"] == 1.2


def test_latency_rows_name_the_handoff_and_its_waiting_items_once() -> None:
    rows = latency_rows(
        {
            "deal-won": {
                "windows": {
                    "last_hour": {"count": 1, "p50": 1.0, "p90": 2.0, "p99": 3.0},
                    "last_day": {"count": 2, "p50": 1.0, "p90": 2.0, "p99": 3.0},
                },
                "pending": 4,
                "oldest_pending_seconds": 60.0,
            }
        }
    )
    assert [(r["handoff"], r["window"], r["pending"]) for r in rows] == [
        ("deal-won", "last hour", 4),
        ("", "last day", None),
    ]


def test_lead_rows_most_captured_first_with_the_commonest_reason_first() -> None:
    rows = lead_rows(
        {
            "ads": {"captured": 1, "verdict_reasons": {}},
            "webinar": {"captured": 9, "verdict_reasons": {"bad_timing": 1, "no_budget": 3}},
        }
    )
    assert [r["name"] for r in rows] == ["webinar", "ads"]
    assert rows[0]["reasons"] == [("no_budget", 3), ("bad_timing", 1)]


def test_audit_query_turns_days_into_a_period_and_names_the_fields_in_error() -> None:
    params, errors = audit_query({"since": "2026-12-01", "until": "2026-12-03", "user_id": " user-rita "})
    assert errors == {}
    assert params == {
        "user_id": "user-rita",
        "record_type": None,
        "record_id": None,
        "since": "2026-12-01T00:00:00Z",
        "until": "2026-12-04T00:00:00Z",  # the end day is included
    }
    _, errors = audit_query({"since": "yesterday", "record_id": "x"})
    assert errors == {
        "since": "'yesterday' is not a date (YYYY-MM-DD).",
        "record_type": "Name the record type (e.g. leads, opportunities, accounts) of this id.",
    }
    _, errors = audit_query({"since": "2026-12-05", "until": "2026-12-01"})
    assert errors == {"until": "The period ends before it starts."}


def test_entries_of_every_service_merge_newest_first() -> None:
    merged = merge_newest_first(
        {
            "a": [{"id": "1", "at": "2026-12-01"}],
            "b": [{"id": "2", "at": "2026-12-03"}, {"id": "3", "at": "2026-11-01"}],
        },
        2,
    )
    assert [e["id"] for e in merged] == ["2", "1"]


def test_each_new_role_opens_its_own_first_page() -> None:
    assert pages.home(frozenset({"executive"})) == "/kpis"
    assert pages.home(frozenset({"auditor"})) == "/audit-log"
    assert pages.home(frozenset({"service_lead"})) == "/accounts"
    assert pages.home(frozenset({"marketing_manager"})) == "/leads"
    assert [p.path for p in pages.menu(frozenset({"auditor"}))] == ["/audit-log"]
    assert not pages.may_open("customer", frozenset({"auditor"}))


async def test_every_kpi_page_shows_each_figure_beside_its_chart(console, fake_gateway) -> None:
    await login(console, "eve")
    r = await console.get("/kpis?period=quarter&team=enterprise")
    assert r.status_code == 200, r.text
    assert fake_gateway.last_params == {"period": "quarter", "team": "enterprise"}
    html = r.text
    assert html.index("<td>2026-11</td>") < html.index("<td>2026-12</td>")  # oldest first
    assert html.count('<svg class="chart') == 8
    assert 'aria-label="Tickets resolved per period"' in html
    assert '<td class="num">7</td>' in html  # December's resolved tickets in the table
    assert "110%" in html  # net retention
    assert "90 min" in html  # deal-won p90 of the last day (5400 s)
    assert "no budget (2), bad timing (1)" in html  # marketing's verdict reasons per channel
    assert '<option value="enterprise" selected>' in html


async def test_a_csm_reads_the_service_kpis_but_not_every_kpi(console) -> None:
    await login(console, "carl")
    r = await console.get("/kpis/service")
    assert r.status_code == 200
    assert "Customer success&#39; action items now" in r.text
    assert "<dt>Overdue</dt><dd>2</dd>" in r.text
    refused = await console.get("/kpis")
    assert refused.status_code == 403
    assert "Not for your role" in refused.text
    assert 'href="/kpis"' not in refused.text  # not in the menu


async def test_marketing_reads_channel_and_campaign_figures_with_verdict_reasons(console) -> None:
    await login(console, "maria")
    r = await console.get("/kpis/marketing")
    assert r.status_code == 200
    assert "spring-launch" in r.text
    assert "no budget (2), bad timing (1)" in r.text
    assert 'acceptance rate per campaign"' in r.text
    assert (await console.get("/kpis/service")).status_code == 403


async def test_the_auditor_queries_every_services_log_newest_first(console) -> None:
    await login(console, "aude")
    home = await console.get("/", follow_redirects=True)
    assert str(home.url).endswith("/audit-log")
    html = home.text
    assert html.index("opp-1") < html.index("u-9") < html.index("lead-1")
    assert "stage: proposal → won" in html
    assert 'href="/audit-log?user_id=user-rita"' in html
    assert 'href="/audit-log/export?service=sales"' in html


async def test_one_services_log_pages_with_its_cursor_and_keeps_the_filters(console, fake_gateway) -> None:
    await login(console, "aude")
    r = await console.get("/audit-log?service=sales&user_id=user-rita&since=2026-12-01")
    assert r.status_code == 200
    assert fake_gateway.last_params == {
        "user_id": "user-rita",
        "since": "2026-12-01T00:00:00Z",
        "limit": "50",
    }
    assert (
        'href="/audit-log?service=sales&amp;user_id=user-rita&amp;since=2026-12-01&amp;cursor=c-2"' in r.text
    )


async def test_an_audit_filter_in_error_is_shown_next_to_its_field(console, fake_gateway) -> None:
    await login(console, "aude")
    r = await console.get("/audit-log?service=sales&since=12/01/2026")
    assert r.status_code == 422
    assert '<p class="field-error" id="err-since" role="alert">&#39;12/01/2026&#39; is not a date' in r.text
    calls = [c for c in fake_gateway.calls if c[1] == "/api/sales/audit"]
    assert calls == []  # nothing asked of the API with a bad filter


async def test_the_export_streams_the_services_csv(console, fake_gateway) -> None:
    await login(console, "aude")
    r = await console.get("/audit-log/export?service=sales&record_type=opportunities&record_id=opp-1")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="audit-sales-')
    assert r.text == "id,at\r\ns-1,2026-12-04\r\n"
    assert fake_gateway.calls[-1][1] == "/api/sales/audit/export"
    assert fake_gateway.last_params == {"record_type": "opportunities", "record_id": "opp-1"}


@pytest.mark.parametrize("username", ["maria", "rita", "carl", "ana", "eve"])
async def test_roles_other_than_auditor_and_admin_do_not_get_the_audit_log(console, username: str) -> None:
    await login(console, username)
    for path in ("/audit-log", "/audit-log/export?service=sales"):
        r = await console.get(path)
        assert r.status_code == 403, (username, path)
        assert "Not for your role" in r.text


async def test_the_auditor_sees_nothing_but_the_audit_log(console) -> None:
    await login(console, "aude")
    for path in ("/leads", "/kpis", "/dashboard", "/accounts", "/customers/lead-1", "/admin/users"):
        assert (await console.get(path)).status_code == 403, path


def test_a_column_chart_draws_a_series_left_to_right_scaled_to_its_top() -> None:
    from console.domain.charts import COLUMN_AREA, Bar, column_chart

    svg = column_chart("Resolved", [Bar("2026-11", 5), Bar("2026-12", 10), Bar("2027-01", 0)])
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([0-9.]+)"', svg)]
    assert heights == [COLUMN_AREA / 2, COLUMN_AREA, 0.0]
    assert svg.index(">2026-11<") < svg.index(">2026-12<") < svg.index(">2027-01<")
    assert 'role="img" aria-label="Resolved"' in svg
    assert "no data yet" in column_chart("Empty", [])


async def test_every_page_says_its_server_time(console) -> None:
    await login(console, "eve")
    r = await console.get("/kpis")
    timing = re.fullmatch(r"app;dur=([0-9.]+)", r.headers["server-timing"])
    assert timing, r.headers["server-timing"]
    assert float(timing.group(1)) > 0


async def test_the_dashboard_shows_a_handoffs_latency_over_time_beside_its_numbers(
    console, fake_gateway
) -> None:
    await login(console, "ana")
    r = await console.get("/dashboard", params={"days": "7"})
    assert r.status_code == 200, r.text
    assert fake_gateway.reports.series_asked == [{"days": "7"}]
    assert "<title>Dashboard · CRM console</title>" in r.text
    section = r.text.split('<main id="main"')[1].split('id="h-over-time"')[1].split("</section>")[0]
    assert '<option value="lead-qualified" selected>' in section
    assert 'aria-label="lead-qualified: transport latency p50 per day"' in section
    assert 'aria-label="lead-qualified: business latency p50 per day"' in section
    rows = section.split('id="latency-over-time"')[1].split("<tbody>")[1].split("</tr>")
    # One row per day with a sample of either kind, oldest first; a kind absent that day shows 0 and a dash.
    assert [row.split("<td>")[1].split("<")[0] for row in rows[:3]] == [
        "2026-12-03",
        "2026-12-04",
        "2026-12-05",
    ]
    assert '<td class="num">0</td>' in rows[1]
    assert ">90 min<" in rows[1]  # the business p50 of 2026-12-04
    assert '<td class="num">7</td>' in rows[2]
    other = await console.get("/dashboard", params={"handoff": "lead-verdict", "days": "400"})
    section = other.text.split('id="h-over-time"')[1].split("</section>")[0]
    assert fake_gateway.reports.series_asked[-1] == {"days": "30"}
    assert "business latency p50" not in section
    assert "no business latency analytics can see" in section
    assert ">20 ms<" in section
