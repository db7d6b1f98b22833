"""The KPIs from service events: periods, teams, retention, NPS, items, business latency windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from analytics.domain.engine import AnalyticsState, apply, merge_state
from analytics.domain.kpis import compute, latest_periods, period_of
from crm_contracts import Envelope, Event, decode, envelope_for
from crm_contracts.events.action_items import (
    ActionItemRaisedForSalesV1,
    ActionItemStatus,
    ActionItemUpdatedBySalesV1,
    SourceKind,
    SourceRecord,
)
from crm_contracts.events.common import Consent, Contact, Money
from crm_contracts.events.leads import EditedField, LeadCapturedV1, LeadEditedV1
from crm_contracts.events.sales import ContractTerm, DealWonV1, LeadVerdictV1, Product, RejectReason, Verdict
from crm_contracts.events.service_desk import (
    CheckInLoggedV1,
    ChurnReason,
    OnboardingStartedV1,
    OnboardingStepCompletedV1,
    RenewalOutcome,
    RenewalRecordedV1,
    Sentiment,
    SurveyAnsweredV1,
    SurveyKind,
    TicketOpenedV1,
    TicketResolvedV1,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NOV = NOW - timedelta(days=10)  # 2026-11-10, in the month and quarter of NOW
SOURCES = {"crm.leads": "leads", "crm.sales": "sales", "crm.service-desk": "service-desk"}


def kpis_at(records: Any, now: datetime) -> Any:
    """The KPI document, untyped for the assertions (its shape is pinned by the API's models)."""
    return compute(records, now)


def env(event: Event, when: datetime) -> Envelope:
    source = next(s for prefix, s in SOURCES.items() if event.topic.startswith(prefix))
    return envelope_for(event, source=source, correlation_id="c", occurred_at=when)


def run(envelopes: list[Envelope], state: AnalyticsState | None = None) -> AnalyticsState:
    state = state or AnalyticsState()
    for e in envelopes:
        apply(state, e, decode(e))
    return state


def month(kpis: dict, team: str = "all") -> dict:
    row = next(r for r in kpis["periods"]["month"] if r["period"] == "2026-11")
    return row["teams"][team]


def ticket(tid: str, account: str, opened: datetime, *, first: float, took: float | None, breached=False):
    out = [env(TicketOpenedV1(ticket_id=tid, account_id=account, priority="high", assignee="rep-1"), opened)]
    if took is not None:
        resolved = TicketResolvedV1(
            ticket_id=tid,
            account_id=account,
            first_response_seconds=first,
            resolution_seconds=took,
            first_response_breached=False,
            resolution_breached=breached,
        )
        out.append(env(resolved, opened + timedelta(seconds=took)))
    return out


def checkin(cid: str, account: str, when: datetime, tier: str = "strategic") -> Envelope:
    event = CheckInLoggedV1(
        checkin_id=cid,
        account_id=account,
        tier=tier,
        csm="csm-1",
        held_at=when,
        sentiment=Sentiment.POSITIVE,
        attendees=2,
    )
    return env(event, when)


def onboarded(account: str, deal: str, when: datetime) -> Envelope:
    event = OnboardingStartedV1(
        account_id=account, deal_id=deal, account_name="Acme", csm="csm-1", checklist=["k"]
    )
    return env(event, when)


def test_ticket_times_per_priority_sla_attainment_and_resolution_rate_per_team():
    events = [
        checkin("ci-1", "acc-1", NOV - timedelta(days=60)),  # acc-1 is strategic
        *ticket("t1", "acc-1", NOV, first=60, took=3600),
        *ticket("t2", "acc-1", NOV, first=120, took=7200, breached=True),
        *ticket("t3", "acc-1", NOV, first=0, took=None),  # still open
        *ticket("t4", "acc-2", NOV, first=30, took=600),  # no tier seen: unassigned
    ]
    kpis = kpis_at(run(events).records, NOW)
    strategic = month(kpis, "strategic")["tickets"]
    assert strategic["opened"] == 3
    assert strategic["resolved"] == 2
    assert strategic["resolution_rate"] == round(2 / 3, 4)
    assert strategic["sla_attainment"] == 0.5
    assert strategic["first_response"]["high"] == {"count": 2, "p50": 60.0, "p90": 120.0}
    assert strategic["resolution"]["high"] == {"count": 2, "p50": 3600.0, "p90": 7200.0}
    assert month(kpis, "unassigned")["tickets"]["opened"] == 1
    assert month(kpis)["tickets"]["opened"] == 4  # "all" sums the teams


def test_nps_is_promoters_minus_detractors_and_csat_is_the_customers_answers():
    def survey(sid: str, kind: SurveyKind, score: int) -> Envelope:
        event = SurveyAnsweredV1(
            survey_id=sid,
            account_id="acc-1",
            kind=kind,
            score=score,
            sent_at=NOV,
            answered_at=NOV + timedelta(hours=1),
        )
        return env(event, NOV + timedelta(hours=1))

    events = [survey(f"n{i}", SurveyKind.NPS, s) for i, s in enumerate((10, 9, 3, 7))]
    events += [survey("c1", SurveyKind.CSAT, 5), survey("c2", SurveyKind.CSAT, 2)]
    figures = month(kpis_at(run(events).records, NOW))
    assert figures["nps"] == {"responses": 4, "promoters": 2, "detractors": 1, "score": 25.0}
    assert figures["csat"] == {"responses": 2, "average": 3.5, "satisfied_share": 0.5}


def renewal(rid: str, account: str, outcome: RenewalOutcome, new_value: float | None) -> Envelope:
    term = ContractTerm.starting(NOV, 12, Money(amount=new_value)) if new_value is not None else None
    event = RenewalRecordedV1(
        renewal_id=rid,
        account_id=account,
        deal_id=f"d-{account}",
        tier="growth",
        outcome=outcome,
        due_date=NOV,
        previous_value=Money(amount=100),
        new_term=term,
        churn_reason=ChurnReason.PRICE if outcome == RenewalOutcome.CHURNED else None,
        recorded_by="csm-1",
    )
    return env(event, NOV)


def test_renewal_rate_logo_churn_and_gross_and_net_revenue_retention():
    events = [
        renewal("r1", "a1", RenewalOutcome.RENEWED, 120),
        renewal("r2", "a2", RenewalOutcome.DOWNGRADED, 60),
        renewal("r3", "a3", RenewalOutcome.CHURNED, None),
    ]
    renewals = month(kpis_at(run(events).records, NOW), "growth")["renewals"]
    assert renewals["recorded"] == 3
    assert renewals["churned"] == 1
    assert renewals["renewal_rate"] == round(2 / 3, 4)
    assert renewals["logo_churn"] == round(1 / 3, 4)
    eur = renewals["revenue_retention"]["EUR"]
    assert eur["previous"] == 300
    assert eur["gross_retention"] == round(160 / 300, 4)  # expansion never lifts gross retention
    assert eur["net_retention"] == round(180 / 300, 4)


def test_checkin_coverage_counts_active_accounts_with_a_checkin_in_the_period():
    events = [
        onboarded("a1", "d1", NOV - timedelta(days=90)),
        onboarded("a2", "d2", NOV - timedelta(days=90)),
        onboarded("a3", "d3", NOV - timedelta(days=90)),
        renewal("r3", "a3", RenewalOutcome.CHURNED, None),  # churned on NOV: still active in November
        checkin("ci", "a1", NOV, tier="growth"),
    ]
    checkins = month(kpis_at(run(events).records, NOW))["checkins"]
    assert checkins == {"active_accounts": 3, "covered_accounts": 1, "coverage": round(1 / 3, 4)}
    december = kpis_at(run(events).records, NOW + timedelta(days=20))
    december_all = next(r for r in december["periods"]["month"] if r["period"] == "2026-12")["teams"]["all"]
    assert december_all["checkins"]["active_accounts"] == 2  # the churned account has left


def raised(item: str, at: datetime, due: datetime) -> Envelope:
    event = ActionItemRaisedForSalesV1(
        item_id=item,
        department="sales",
        title="call them back",
        due_at=due,
        account_id="acc-1",
        account_name="Acme",
        source=SourceRecord(kind=SourceKind.SURVEY, record_id="s1"),
        raised_by="csm-1",
        raised_at=at,
    )
    return env(event, at)


def step(
    item: str, status: str, at: datetime, raised_at: datetime, due: datetime, automatic=False
) -> Envelope:
    event = ActionItemUpdatedBySalesV1(
        item_id=item,
        department="sales",
        account_id="acc-1",
        status=ActionItemStatus(status),
        acted_by="system" if automatic else "rep-1",
        automatic=automatic,
        raised_at=raised_at,
        due_at=due,
        acted_at=at,
    )
    return env(event, at)


def test_open_overdue_escalated_items_and_time_to_close_per_department():
    due_past = NOW - timedelta(days=1)
    events = [
        raised("i1", NOV, due_past),
        step("i1", "escalated", due_past + timedelta(minutes=1), NOV, due_past, automatic=True),
        raised("i2", NOV, NOW + timedelta(days=3)),
        step("i2", "accepted", NOV + timedelta(hours=1), NOV, NOW + timedelta(days=3)),
        step("i2", "done", NOV + timedelta(hours=5), NOV, NOW + timedelta(days=3)),
    ]
    kpis = kpis_at(run(events).records, NOW)
    assert kpis["action_items"]["sales"] == {"open": 1, "overdue": 1, "escalated": 1}
    sales = month(kpis)["action_items"]["sales"]
    assert sales["raised"] == 2
    assert sales["closed"] == 1
    assert sales["time_to_close"] == {"count": 1, "p50": 18000.0, "p90": 18000.0}


def test_business_latency_fires_on_a_fresh_breach_and_clears_after_the_window():
    start = NOW - timedelta(hours=2)
    due = NOW + timedelta(days=2)
    waiting = run([raised("i1", start, due)])
    hour = kpis_at(waiting.records, NOW)["business_latency"]["action-item-to-sales"]
    assert hour["pending"] == 1
    assert hour["oldest_pending_seconds"] == 7200.0
    assert hour["windows"]["last_hour"]["p50"] == 7200.0  # waiting counts by its age

    # The escalation is automatic: not the receiver's first human step.
    acted = run([step("i1", "escalated", NOW - timedelta(minutes=20), start, due, automatic=True)], waiting)
    assert kpis_at(acted.records, NOW)["business_latency"]["action-item-to-sales"]["pending"] == 1
    acted = run([step("i1", "accepted", NOW - timedelta(minutes=10), start, due)], acted)
    now_figures = kpis_at(acted.records, NOW)["business_latency"]["action-item-to-sales"]
    assert now_figures["pending"] == 0
    assert now_figures["windows"]["last_hour"]["p50"] == 6600.0  # the fresh breach is visible
    later = kpis_at(acted.records, NOW + timedelta(hours=2))["business_latency"]["action-item-to-sales"]
    assert later["windows"]["last_hour"]["count"] == 0  # ... and clears an hour after
    assert later["windows"]["last_day"]["p50"] == 6600.0


def test_deal_won_business_latency_ends_at_the_csms_first_onboarding_step_not_the_automatic_start():
    won_at = NOW - timedelta(hours=3)
    deal = DealWonV1(
        deal_id="d1",
        account_name="Acme",
        contacts=[Contact(name="Ada", email="ada@example.com")],
        products=[Product(sku="crm", name="CRM", quantity=1, unit_price=10)],
        value=Money(amount=10),
        commitments=[],
        sales_owner="rep-1",
        won_at=won_at,
    )
    state = run([env(deal, won_at), onboarded("a1", "d1", won_at + timedelta(seconds=2))])
    assert kpis_at(state.records, NOW)["business_latency"]["deal-won"]["pending"] == 1
    first = OnboardingStepCompletedV1(
        account_id="a1",
        deal_id="d1",
        item="kickoff",
        completed_by="csm-1",
        completed_at=won_at + timedelta(hours=1),
        remaining=2,
    )
    state = run([env(first, won_at + timedelta(hours=1))], state)
    latency = kpis_at(state.records, NOW)["business_latency"]["deal-won"]
    assert latency["pending"] == 0
    assert latency["windows"]["last_day"]["p50"] == 3600.0


def test_lead_verdict_ends_at_marketings_first_edit_after_a_rejection_or_recycling():
    decided = NOW - timedelta(hours=3)

    def verdict(lead: str, outcome: Verdict, reason: RejectReason | None = None) -> Envelope:
        event = LeadVerdictV1(lead_id=lead, verdict=outcome, reason_code=reason, decided_by="rep-1")
        return env(event, decided)

    def edit(lead: str, at: datetime) -> Envelope:
        event = LeadEditedV1(
            lead_id=lead,
            changed_fields=[EditedField.COMPANY],
            edited_by="user-mia",
            edited_by_roles=["marketing"],
            edited_at=at,
            source_channel="web",
        )
        return env(event, at)

    events = [
        edit("rejected", decided - timedelta(hours=1)),  # before the verdict: not an answer to it
        verdict("rejected", Verdict.REJECTED, RejectReason.BAD_DATA),
        verdict("recycled", Verdict.RECYCLED),
        verdict("accepted", Verdict.ACCEPTED),  # sales' lead now: marketing owes it no step
    ]
    state = run(events)
    latency = kpis_at(state.records, NOW)["business_latency"]["lead-verdict"]
    assert (latency["pending"], latency["oldest_pending_seconds"]) == (2, 3 * 3600.0)
    figures_before_edits = kpis_at(state.records, NOW)["marketing"]
    state = run(
        [edit("rejected", decided + timedelta(minutes=30)), edit("rejected", decided + timedelta(hours=2))],
        state,
    )
    latency = kpis_at(state.records, NOW)["business_latency"]["lead-verdict"]
    assert latency["pending"] == 1, "the recycled lead still waits for marketing"
    day = latency["windows"]["last_day"]
    assert (day["count"], day["p50"]) == (2, 1800.0), (
        "the first edit after the rejection, plus the waiting one"
    )
    assert day["p99"] == 3 * 3600.0
    assert kpis_at(state.records, NOW)["marketing"] == figures_before_edits, "an edit is no lead figure"


def test_marketing_sees_channel_and_campaign_figures_with_sales_verdict_reasons():
    def capture(lead: str, channel: str, campaign: str | None) -> Envelope:
        event = LeadCapturedV1(
            lead_id=lead,
            email=f"{lead}@example.com",
            name="Ada",
            company="Acme",
            source_channel=channel,
            campaign=campaign,
            consent=Consent(marketing_email=True),
            merged=False,
        )
        return env(event, NOV)

    def decide(lead: str, outcome: Verdict, reason: RejectReason | None = None) -> Envelope:
        return env(LeadVerdictV1(lead_id=lead, verdict=outcome, reason_code=reason, decided_by="rep-1"), NOV)

    events = [
        capture("l1", "web", "spring"),
        capture("l2", "web", None),
        capture("l3", "events", "spring"),
        decide("l1", Verdict.ACCEPTED),
        decide("l2", Verdict.REJECTED, RejectReason.NO_BUDGET),
        decide("l3", Verdict.REJECTED, RejectReason.COMPETITOR),
    ]
    figures = kpis_at(run(events).records, NOW)["marketing"]
    web = figures["channels"]["web"]
    assert (web["captured"], web["accepted"], web["rejected"]) == (2, 1, 1)
    assert web["verdict_reasons"] == {"no_budget": 1}
    assert web["acceptance_rate"] == 0.5
    assert figures["campaigns"]["spring"]["verdict_reasons"] == {"competitor": 1}
    assert figures["campaigns"]["none"]["captured"] == 1


def test_the_kpis_are_idempotent_order_insensitive_and_mergeable():
    due = NOW + timedelta(days=2)
    events = [
        onboarded("a1", "d1", NOV - timedelta(days=40)),
        checkin("ci", "a1", NOV),
        *ticket("t1", "a1", NOV, first=60, took=3600),
        renewal("r1", "a1", RenewalOutcome.RENEWED, 150),
        raised("i1", NOV, due),
        step("i1", "done", NOV + timedelta(hours=2), NOV, due),
    ]
    once = kpis_at(run(events).records, NOW)
    assert kpis_at(run(events + events).records, NOW) == once  # redelivered
    assert kpis_at(run(list(reversed(events))).records, NOW) == once  # any order
    half = run(events[::2])
    merge_state(half, run(events[1::2]))  # reconciliation's merge
    assert kpis_at(half.records, NOW) == once
    json.dumps(once)  # plain JSON, ready to store


def test_periods_are_iso_weeks_months_and_quarters_newest_first():
    assert period_of("week", datetime(2026, 12, 31, tzinfo=UTC).timestamp()) == "2026-W53"
    assert period_of("quarter", datetime(2026, 11, 1, tzinfo=UTC).timestamp()) == "2026-Q4"
    months = latest_periods("month", NOW.timestamp(), 3)
    assert [name for name, _, _ in months] == ["2026-11", "2026-10", "2026-09"]
    name, start, end = latest_periods("quarter", NOW.timestamp(), 1)[0]
    assert (name, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)) == (
        "2026-Q4",
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_nothing_in_the_kpis_names_a_person():
    events = [checkin("ci", "a1", NOV), *ticket("t1", "a1", NOV, first=60, took=3600), raised("i1", NOV, NOW)]
    text = json.dumps(kpis_at(run(events).records, NOW))
    assert "csm-1" not in text
    assert "rep-1" not in text
    assert "a1" not in text


def test_commitment_flagged_ends_at_sales_first_answer_acknowledged_or_resolved():
    from crm_contracts.events.sales import CommitmentFlagStatus, CommitmentFlagUpdatedBySalesV1
    from crm_contracts.events.service_desk import CommitmentFlaggedV1

    flagged_at = NOW - timedelta(hours=5)
    flag = CommitmentFlaggedV1(
        flag_id="f1", account_id="a1", deal_id="d1", commitment_id="c1", reason="no", flagged_by="csm-1"
    )

    def answer(status: CommitmentFlagStatus, at: datetime) -> Envelope:
        event = CommitmentFlagUpdatedBySalesV1(
            flag_id="f1",
            deal_id="d1",
            account_id="a1",
            commitment_id="c1",
            status=status,
            resolution="scope agreed" if status == CommitmentFlagStatus.RESOLVED else None,
            acted_by="rep-1",
            acted_at=at,
            flagged_at=flagged_at,
        )
        return env(event, at)

    resolved_first = [
        env(flag, flagged_at),
        answer(CommitmentFlagStatus.RESOLVED, NOW - timedelta(hours=1)),
        answer(CommitmentFlagStatus.ACKNOWLEDGED, NOW - timedelta(hours=3)),  # arrives late
    ]
    latency = kpis_at(run(resolved_first).records, NOW)["business_latency"]["commitment-flagged"]
    assert latency["pending"] == 0
    assert latency["windows"]["last_day"]["p50"] == 7200.0  # flagged -> acknowledged


def test_a_renewal_counts_in_the_period_it_was_due_or_earlier_when_decided_early():
    early = renewal("r1", "a1", RenewalOutcome.RENEWED, 130)
    payload = {**early.payload, "due_date": (NOW + timedelta(days=200)).isoformat()}
    early = early.model_copy(update={"payload": payload})
    late = renewal("r2", "a2", RenewalOutcome.CHURNED, None)  # due NOV ...
    late = late.model_copy(update={"occurred_at": NOW})  # ... recorded later in the month
    renewals = month(kpis_at(run([early, late]).records, NOW))["renewals"]
    assert (renewals["recorded"], renewals["renewed"], renewals["churned"]) == (2, 1, 1)


def test_an_item_closed_by_sales_waits_for_customer_success_next_human_step_on_the_account():
    raised_at, due = NOW - timedelta(days=3), NOW + timedelta(days=3)
    closed_at = NOW - timedelta(hours=4)
    events = [
        raised("i1", raised_at, due),
        checkin("c-before", "acc-1", raised_at + timedelta(hours=1)),  # before the outcome: not an answer
        step("i1", "accepted", raised_at + timedelta(hours=2), raised_at, due),  # progress, not the outcome
        step("i1", "done", closed_at, raised_at, due),
        checkin("c-other", "acc-2", closed_at + timedelta(hours=1)),  # another account's
    ]
    state = run(events)
    waiting = kpis_at(state.records, NOW)["business_latency"]["action-item-outcome-from-sales"]
    assert waiting["pending"] == 1
    assert waiting["oldest_pending_seconds"] == 4 * 3600.0
    assert waiting["windows"]["last_hour"]["p50"] == 4 * 3600.0  # unacted: counted by its age

    state = run([checkin("c-after", "acc-1", closed_at + timedelta(hours=2))], state)
    latency = kpis_at(state.records, NOW)["business_latency"]["action-item-outcome-from-sales"]
    assert latency["pending"] == 0
    assert latency["windows"]["last_day"]["p50"] == 7200.0  # closed -> the CSM's check-in
    assert (
        kpis_at(state.records, NOW)["business_latency"]["action-item-outcome-from-marketing"]["pending"] == 0
    )


def test_an_escalation_is_no_outcome_for_customer_success_to_act_on():
    raised_at, due = NOW - timedelta(days=3), NOW - timedelta(days=1)
    events = [
        raised("i1", raised_at, due),
        step("i1", "escalated", NOW - timedelta(hours=20), raised_at, due, True),
    ]
    latency = kpis_at(run(events).records, NOW)["business_latency"]["action-item-outcome-from-sales"]
    assert latency["pending"] == 0
    assert latency["windows"]["last_30_days"]["count"] == 0


def test_each_answer_of_sales_to_a_flag_waits_for_customer_success_next_step_on_the_account():
    from crm_contracts.events.sales import CommitmentFlagStatus, CommitmentFlagUpdatedBySalesV1

    acknowledged, resolved = NOW - timedelta(hours=6), NOW - timedelta(hours=3)

    def answer(status: CommitmentFlagStatus, at: datetime) -> Envelope:
        event = CommitmentFlagUpdatedBySalesV1(
            flag_id="f1",
            deal_id="d1",
            account_id="a1",
            commitment_id="c1",
            status=status,
            resolution="scope agreed" if status == CommitmentFlagStatus.RESOLVED else None,
            acted_by="rep-1",
            acted_at=at,
            flagged_at=NOW - timedelta(days=1),
        )
        return env(event, at)

    events = [
        answer(CommitmentFlagStatus.ACKNOWLEDGED, acknowledged),
        answer(CommitmentFlagStatus.RESOLVED, resolved),
    ]
    events += ticket("t1", "a1", NOW - timedelta(hours=5), first=60, took=None)  # after the acknowledgement
    latency = kpis_at(run(events).records, NOW)["business_latency"]["commitment-flag-outcome"]
    assert latency["pending"] == 1  # the resolution: nothing since
    assert latency["oldest_pending_seconds"] == 3 * 3600.0
    assert latency["windows"]["last_day"]["count"] == 2  # 1 h (acknowledged -> ticket) and 3 h waiting
    assert latency["windows"]["last_day"]["p50"] == 3600.0


def test_business_latency_per_day_counts_the_actions_taken_that_day():
    from analytics.domain.kpis import daily_stats

    day = 86_400.0
    now = 20_000 * day + 3600.0  # 01:00 UTC on day 20000
    samples = [
        (now - 2 * day, now - 2 * day + 60.0),  # acted two days ago, after 1 min
        (now - 3 * day, now - 2 * day + 7200.0),  # handed off the day before, acted two days ago
        (now - 600.0, now - 300.0),  # today, after 5 min
        (now - 100 * day, now - 95 * day),  # acted 95 days ago: outside the 90 days
        (now - 60.0, None),  # still waiting: in no day
    ]
    assert daily_stats(samples, now) == [
        {"day": "2024-10-02", "count": 2, "p50": 60.0, "p90": 86_400.0 + 7200.0},
        {"day": "2024-10-04", "count": 1, "p50": 300.0, "p90": 300.0},
    ]
    assert daily_stats([], now) == []
