"""The sales manager's pages against a fake gateway: stages and required fields, response times."""

from __future__ import annotations

import re

import httpx
from console.api.forms import pipeline_body, pipeline_errors


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def _login(console: httpx.AsyncClient, username: str) -> None:
    page = await console.get("/login")
    r = await console.post(
        "/login",
        data={"csrf_token": csrf_of(page.text), "username": username, "password": f"{username}-pass"},
    )
    assert r.status_code == 303


def test_the_stage_rows_become_the_pipeline_in_position_order_without_blank_rows() -> None:
    form = {
        "stage-0.position": "2",
        "stage-0.name": "Proposal",
        "stage-0.probability": "50",
        "stage-0.required_fields": "amount, products ,",
        "stage-1.position": "1",
        "stage-1.name": "qualification",
        "stage-1.probability": "10",
        "stage-2.name": "",  # cleared: the stage is removed
        "stage-2.probability": "70",
    }
    errors: dict[str, str] = {}
    body, rows = pipeline_body(form, 3, errors)
    assert errors == {}
    assert body == {
        "stages": [
            {"name": "qualification", "probability": 0.1, "required_fields": []},
            {"name": "proposal", "probability": 0.5, "required_fields": ["amount", "products"]},
        ]
    }
    assert rows == [1, 0]


def test_a_probability_outside_0_to_100_or_not_a_number_is_marked_on_its_row() -> None:
    errors: dict[str, str] = {}
    pipeline_body(
        {"stage-0.name": "a", "stage-0.probability": "150", "stage-1.name": "b", "stage-1.probability": "x"},
        2,
        errors,
    )
    assert errors == {
        "stage-0.probability": "Between 0 and 100 (%).",
        "stage-1.probability": "'x' is not a number.",
    }


def test_the_apis_refusal_lands_on_the_rows_it_names() -> None:
    stages = [{"name": "qualification"}, {"name": "won"}, {"name": "lost"}]
    message = (
        "invalid pipeline: stage 'won' must require ['amount'] (its handoff needs them); "
        "duplicate stage names: ['x']"
    )
    out = pipeline_errors(message, {"stages.2.probability": "too big"}, stages, [0, 3, 1])
    assert out == {
        "stage-1.probability": "too big",
        "stage-3.name": "stage 'won' must require ['amount'] (its handoff needs them)",
        "form": "duplicate stage names: ['x']",
    }


async def test_the_manager_edits_stages_and_required_fields(console, fake_gateway) -> None:
    await _login(console, "sam")
    page = await console.get("/team/stages")
    assert page.status_code == 200
    assert 'href="/team/stages"' in page.text  # in the menu
    assert 'value="proposal"' in page.text
    assert 'value="amount"' in page.text
    assert '<label class="sr-only" for="f-stage-0-name">' in page.text
    form = {
        "csrf_token": csrf_of(page.text),
        "rows": "6",
        "stage-0.position": "1", "stage-0.name": "qualification", "stage-0.probability": "10",
        "stage-1.position": "2", "stage-1.name": "proposal", "stage-1.probability": "50",
        "stage-1.required_fields": "amount, products",
        "stage-2.position": "4", "stage-2.name": "won", "stage-2.probability": "100",
        "stage-2.required_fields": "amount, products, commitments",
        "stage-3.position": "5", "stage-3.name": "lost", "stage-3.probability": "0",
        "stage-3.required_fields": "lost_reason",
        "stage-4.position": "3", "stage-4.name": "negotiation", "stage-4.probability": "70",
        "stage-4.required_fields": "close_date",
    }  # fmt: skip
    r = await console.post("/team/stages", data=form)
    assert r.status_code == 303, r.text
    assert fake_gateway.sales.puts[-1]["stages"][2] == {
        "name": "negotiation",
        "probability": 0.7,
        "required_fields": ["close_date"],
    }
    saved = await console.get(r.headers["location"])
    assert "Stages saved as a new pipeline version" in saved.text
    assert "version 2" in saved.text


async def test_a_refused_pipeline_is_shown_on_the_stages_row_with_what_was_typed(
    console, fake_gateway
) -> None:
    await _login(console, "sam")
    page = await console.get("/team/stages")
    form = {
        "csrf_token": csrf_of(page.text),
        "rows": "4",
        "stage-0.name": "qualification", "stage-0.probability": "10",
        "stage-1.name": "won", "stage-1.probability": "100",
        "stage-1.required_fields": "products, commitments",
        "stage-2.name": "lost", "stage-2.probability": "0", "stage-2.required_fields": "lost_reason",
        "stage-3.name": "Typed but refused", "stage-3.probability": "5",
    }  # fmt: skip
    r = await console.post("/team/stages", data=form)
    assert r.status_code == 422
    assert 'id="err-stage-1-name"' in r.text
    assert "must require [&#39;amount&#39;]" in r.text
    assert 'aria-describedby="err-stage-1-name"' in r.text
    assert 'value="typed but refused"' in r.text.lower()
    assert fake_gateway.sales.pipeline["version"] == 1


async def test_stages_are_the_managers_page(console, fake_gateway) -> None:
    await _login(console, "rita")
    page = await console.get("/team/stages")
    assert page.status_code == 403
    assert "Stages &amp; fields is for the roles" in page.text
    assert fake_gateway.sales.puts == []


async def test_the_team_page_shows_each_reps_response_times_beside_a_chart(console, fake_gateway) -> None:
    fake_gateway.sales.response_times = {
        "truncated": False,
        "reps": [
            {
                "owner": "user-rob",
                "answered": 4,
                "p50_seconds": 5400.0,
                "p90_seconds": 9000.0,
                "within_sla": 1,
                "pending": 2,
                "pending_overdue": 1,
                "oldest_pending_seconds": 7300.0,
            },
            {
                "owner": "user-rita",
                "answered": 0,
                "p50_seconds": None,
                "p90_seconds": None,
                "within_sla": 0,
                "pending": 1,
                "pending_overdue": 0,
                "oldest_pending_seconds": 60.0,
            },
        ],
    }
    await _login(console, "sam")
    r = await console.get("/team", params={"days": "7"})
    assert r.status_code == 200, r.text
    assert fake_gateway.sales.response_days == ["7"]
    table = r.text.split('id="response-times"')[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    assert ">90 min<" in rows[0]
    assert ">2.5 h<" in rows[0]
    assert ">25%<" in rows[0]  # 1 of 4 within the SLA
    assert ">2.0 h<" in rows[0]  # the oldest waiting
    assert ">60.0 s<" in rows[1]
    chart = r.text.split('id="h-response"')[1].split("</svg>")[0]
    assert 'aria-label="Median time to answer a lead, last 7 days"' in chart
    assert "90 min" in chart
    assert '<option value="7" selected>' in r.text


async def test_a_window_outside_the_choices_reads_30_days(console, fake_gateway) -> None:
    await _login(console, "sam")
    r = await console.get("/team", params={"days": "400"})
    assert r.status_code == 200
    assert "No lead reached a rep in this window." in r.text
    assert "last 30 days" in r.text
    assert fake_gateway.sales.response_days == ["30"]


async def test_a_deal_moves_on_from_the_board_asked_for_the_next_stages_missing_fields(
    console, fake_gateway
) -> None:
    await _login(console, "rita")
    board = await console.get("/pipeline")
    assert board.status_code == 200, board.text
    card = board.text.split('href="/opportunities/opp-1"')[1].split("</article>")[0]
    assert "Move to proposal (asks for: amount)" in card
    assert '<label for="f-opp-1-amount">' in card
    won = board.text.split('href="/opportunities/opp-2"')[1].split("</article>")[0]
    assert "Move to" not in won  # closed: nothing moves out of won
    form = {"csrf_token": csrf_of(board.text), "stage": "proposal", "_back": "/pipeline", "amount": "1,200"}
    r = await console.post("/opportunities/opp-1/stage", data=form)
    assert r.status_code == 303
    assert r.headers["location"] == "/pipeline?ok=moved"
    assert fake_gateway.sales.moves == [("opp-1", {"stage": "proposal", "fields": {"amount": "1200"}})]
