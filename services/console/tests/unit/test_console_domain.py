"""Pure pieces of the console: charts, countdowns, menus, form parsing, list filtering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from console.api.customer import Part
from console.api.forms import commitments, products, stage_fields
from console.api.marketing import list_params
from console.api.reports import dashboard_charts
from console.api.sales import missing_fields
from console.domain import charts, pages, timing
from console.session import safe_next


def test_bars_scale_to_the_largest_value_and_carry_their_numbers_and_escaped_labels() -> None:
    svg = charts.bar_chart("Funnel <all>", [charts.Bar("captured", 10), charts.Bar("won & kept", 5)])
    assert svg.startswith("<svg")
    assert 'aria-label="Funnel &lt;all&gt;"' in svg
    assert 'width="300.0"' in svg
    assert 'width="150.0"' in svg
    assert "won &amp; kept" in svg
    assert ">10<" in svg
    assert ">5<" in svg


def test_an_empty_chart_says_so() -> None:
    assert "no data yet" in charts.bar_chart("Channels", [])
    assert 'width="0.0"' in charts.bar_chart("Zero", [charts.Bar("a", 0)])


def test_latencies_and_percentages_read_like_words() -> None:
    assert charts.format_seconds(0.0123) == "12 ms"
    assert charts.format_seconds(42) == "42.0 s"
    assert charts.format_seconds(3600) == "60 min"
    assert charts.format_seconds(None) == charts.NONE
    assert charts.format_percent(0.256) == "26%"


def test_sla_countdown_before_near_and_after_the_deadline() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert timing.countdown((now + timedelta(hours=2, minutes=5)).isoformat(), now) == (
        "due in 2 h 5 min",
        "ok",
    )
    assert timing.countdown((now + timedelta(minutes=10)).isoformat(), now) == ("due in 10 min", "soon")
    assert timing.countdown((now - timedelta(minutes=90)).isoformat(), now) == (
        "overdue by 1 h 30 min",
        "overdue",
    )
    assert timing.countdown(now.isoformat(), now, done=True) == ("done", "done")
    assert timing.countdown("not a time", now) == ("no deadline", "ok")


def test_each_role_gets_its_own_menu_and_first_page() -> None:
    assert pages.home(frozenset({"marketing"})) == "/leads"
    assert pages.home(frozenset({"sales_rep"})) == "/inbox"
    assert pages.home(frozenset({"service_rep"})) == "/tickets"
    assert pages.home(frozenset({"customer_success_manager"})) == "/accounts"
    assert pages.home(frozenset({"analyst"})) == "/dashboard"
    assert pages.home(frozenset({"admin"})) == "/admin/users"
    rep_menu = {p.key for p in pages.menu(frozenset({"sales_rep"}))}
    assert rep_menu == {"inbox", "pipeline", "forecast", "action_items"}
    assert "team" in {p.key for p in pages.menu(frozenset({"sales_manager"}))}
    assert not pages.may_open("users", frozenset({"sales_manager", "marketing"}))


def test_products_and_commitments_are_parsed_one_per_line_with_errors_in_words() -> None:
    errors: dict[str, str] = {}
    assert products("CRM-ENT; Seat; 50; 600\n\n", errors) == [
        {"sku": "CRM-ENT", "name": "Seat", "quantity": 50, "unit_price": "600"}
    ]
    assert products("CRM-ENT; Seat; fifty; 600", errors) is None
    assert errors["products"] == "Line 1: the quantity 'fifty' is not a whole number."
    assert commitments("Migration | 2027-01-31\nWorkshop\n") == [
        {"description": "Migration", "due_date": "2027-01-31T00:00:00Z"},
        {"description": "Workshop"},
    ]


def test_a_stage_move_sends_only_what_was_filled_in() -> None:
    fields, errors = stage_fields(
        {"amount": "30,000", "budget": "", "close_date": "2027-01-31", "products": ""}
    )
    assert fields == {"amount": "30000", "close_date": "2027-01-31"}
    assert errors == {}
    _, errors = stage_fields({"amount": "a lot"})
    assert errors == {"amount": "'a lot' is not a number."}


def test_the_fields_a_stage_asks_for_are_the_required_ones_the_deal_lacks() -> None:
    opp = {"fields": {"budget": 5}, "amount": 100, "products": [], "commitments": []}
    won = {"name": "won", "required_fields": ["amount", "products", "commitments"]}
    assert missing_fields(opp, won) == ["products", "commitments"]
    assert missing_fields(opp, {"name": "discovery", "required_fields": ["budget"]}) == []


def test_the_lead_list_query_goes_to_the_leads_api_whole() -> None:
    """Search, every filter, the order and the cursor are the API's: nothing is filtered here."""
    query = {
        "search": " ada  ",
        "status": "new",
        "channel": "webinar",
        "campaign": "spring",
        "min_score": "30",
        "max_score": "",
        "owner": "user-rita",
        "sort": "score",
        "limit": "100",
        "cursor": "abc",
        "ok": "captured",
    }
    assert list_params(query) == {
        "q": "ada",
        "status": "new",
        "channel": "webinar",
        "campaign": "spring",
        "min_score": "30",
        "max_score": None,
        "owner": "user-rita",
        "sort": "score",
        "limit": "100",
        "cursor": "abc",
    }
    defaults = list_params({"sort": "shoe_size", "limit": "7"})
    assert (defaults["sort"], defaults["limit"], defaults["q"], defaults["cursor"]) == (
        "newest",
        "50",
        None,
        None,
    )


def test_the_dashboard_puts_the_numbers_beside_each_chart() -> None:
    summary = {
        "funnel": {
            "stages": {"captured": 4, "qualified": 3, "accepted": 2, "won": 1, "onboarded": 1},
            "conversion": {},
        },
        "channels": {"webinar": {"captured": 2, "won": 1}, "web_form": {"captured": 2, "won": 0}},
        "handoffs": {
            "lead_qualified": {
                "transport": {"count": 3, "p50": 0.02, "p95": 0.05, "p99": 0.07},
                "business": None,
            }
        },
    }
    out = dashboard_charts(summary)
    assert [name for name, _ in out["channel_rows"]] == ["webinar", "web_form"]
    assert out["latency_rows"] == [
        {"handoff": "lead_qualified", "kind": "transport", "count": 3, "p50": 0.02, "p95": 0.05, "p99": 0.07}
    ]
    assert "50 ms" in out["latency"]
    assert ">4<" in out["funnel"]


def test_only_local_paths_are_followed_after_login() -> None:
    assert safe_next("/leads?status=new") == "/leads?status=new"
    for hostile in ("//evil.example", "https://evil.example", "/\\evil", "", None, "/x\n"):
        assert safe_next(hostile, "/") == "/"


def test_a_part_refused_by_the_api_is_kept_apart_from_one_not_reached_yet() -> None:
    assert Part("Tickets", refused="requires one of the roles").refused
    assert Part("Tickets", missing=True).data is None


async def test_the_360_reads_the_accounts_tickets_surveys_and_action_items_together() -> None:
    from console.api.customer import _account_parts
    from console.api_client import ApiError

    class Api:
        def __init__(self) -> None:
            self.paths: list[str] = []

        async def get(self, path: str, params: dict[str, object] | None = None) -> dict[str, object]:
            self.paths.append(path)
            if path.endswith("/surveys"):
                raise ApiError(403, "forbidden", "requires one of the roles ['customer_success_manager']")
            return {"items": [{"path": path}]}

    api = Api()
    parts = await _account_parts(api, Part("Account", {"account_id": "acc-1"}))  # type: ignore[arg-type]
    assert sorted(api.paths) == [
        "/api/service-desk/accounts/acc-1/action-items",
        "/api/service-desk/accounts/acc-1/surveys",
        "/api/service-desk/tickets",
    ]
    assert parts["surveys"].refused == "requires one of the roles ['customer_success_manager']"
    assert parts["action_items"].data == {
        "items": [{"path": "/api/service-desk/accounts/acc-1/action-items"}]
    }
    assert parts["tickets"].title == "Tickets"
    unreached = await _account_parts(api, Part("Account", missing=True))  # type: ignore[arg-type]
    assert all(p.missing and not p.refused for p in unreached.values())
    refused = await _account_parts(api, Part("Account", refused="not yours"))  # type: ignore[arg-type]
    assert all(p.refused == "not yours" for p in refused.values())
