"""Sales' pure rules: pipeline and required fields, round-robin, verdicts, forecast, access."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from crm_platform.actor import Actor
from crm_platform.errors import Conflict, Forbidden, RuleViolation
from sales.domain.access import can_access, forecast_scope, is_manager, owner_scope, require_access
from sales.domain.assignment import AssignedBy, plan_upsell_owner, rotation, round_robin
from sales.domain.forecast import StageTotal, forecast
from sales.domain.inbox import (
    InboxStatus,
    check_assign,
    check_sla_minutes,
    check_verdict,
    is_overdue,
    responded_within_sla,
    response_due_at,
)
from sales.domain.opportunity import (
    ActivityType,
    CommitmentFlag,
    OpportunityStatus,
    check_activity,
    check_open_for_edit,
    flagged_commitments,
    merge_contacts,
    status_for_stage,
    with_commitment_ids,
)
from sales.domain.pipeline import (
    DEFAULT_PIPELINE,
    Pipeline,
    Stage,
    build_pipeline,
    check_stage_move,
    missing_fields,
    pipeline_problems,
    removed_stages,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REP = Actor.of("rita", ["sales_rep"])
OTHER = Actor.of("otto", ["sales_rep"])
MANAGER = Actor.of("mona", ["sales_manager"])

WON_FIELDS = {
    "amount": 1000.0,
    "products": [{"sku": "A", "name": "A", "quantity": 1, "unit_price": 1000.0}],
    "commitments": [],
}


# -- pipeline --------------------------------------------------------------------------------


def test_default_pipeline_is_the_documented_one() -> None:
    p = DEFAULT_PIPELINE

    def required(name: str) -> tuple[str, ...]:
        stage = p.stage(name)
        assert stage is not None
        return stage.required_fields

    assert p.names == ["qualification", "discovery", "proposal", "negotiation", "won", "lost"]
    assert [s.probability for s in p.stages] == [0.1, 0.2, 0.5, 0.7, 1.0, 0.0]
    assert required("discovery") == ("budget", "decision_maker")
    assert required("proposal") == ("amount", "products")
    assert required("negotiation") == ("close_date",)
    assert required("won") == ("amount", "products", "commitments")
    assert required("lost") == ("lost_reason",)
    assert p.first.name == "qualification"
    assert pipeline_problems(p.stages) == []


def test_missing_fields_keeps_the_stage_order_and_counts_an_empty_list_as_given() -> None:
    required = ("amount", "products", "commitments")
    assert missing_fields(required, {}) == ["amount", "products", "commitments"]
    assert missing_fields(required, {"commitments": [], "amount": 0}) == ["products"]
    assert missing_fields(("decision_maker",), {"decision_maker": "  "}) == ["decision_maker"]
    assert missing_fields(("decision_maker",), {"decision_maker": None}) == ["decision_maker"]
    assert missing_fields(("flag",), {"flag": False}) == []


def test_a_move_merges_the_given_fields_over_the_existing_ones() -> None:
    merged = check_stage_move(
        DEFAULT_PIPELINE, "qualification", "discovery", {"budget": 5000, "x": 1}, {"decision_maker": "CFO"}
    )
    assert merged == {"budget": 5000, "x": 1, "decision_maker": "CFO"}


def test_a_move_with_missing_fields_lists_them() -> None:
    with pytest.raises(RuleViolation) as err:
        check_stage_move(DEFAULT_PIPELINE, "qualification", "won", {"amount": 10}, {})
    assert err.value.details["missing"] == ["products", "commitments"]
    assert err.value.details["stage"] == "won"


def test_won_needs_commitments_given_explicitly_even_if_empty() -> None:
    fields = {k: v for k, v in WON_FIELDS.items() if k != "commitments"}
    with pytest.raises(RuleViolation) as err:
        check_stage_move(DEFAULT_PIPELINE, "negotiation", "won", fields, {})
    assert err.value.details["missing"] == ["commitments"]
    assert check_stage_move(DEFAULT_PIPELINE, "negotiation", "won", fields, {"commitments": []})


@pytest.mark.parametrize("closed", ["won", "lost"])
def test_nothing_moves_out_of_a_closed_stage(closed: str) -> None:
    with pytest.raises(Conflict):
        check_stage_move(DEFAULT_PIPELINE, closed, "negotiation", WON_FIELDS, {})


def test_moving_into_the_current_stage_or_an_unknown_one_is_refused() -> None:
    with pytest.raises(Conflict):
        check_stage_move(DEFAULT_PIPELINE, "proposal", "proposal", WON_FIELDS, {})
    with pytest.raises(RuleViolation) as err:
        check_stage_move(DEFAULT_PIPELINE, "proposal", "signed", {}, {})
    assert err.value.details["stages"] == DEFAULT_PIPELINE.names


def test_moving_backwards_is_allowed_when_the_target_stage_is_satisfied() -> None:
    merged = check_stage_move(
        DEFAULT_PIPELINE, "negotiation", "discovery", {"budget": 1, "decision_maker": "CEO"}, {}
    )
    assert merged["decision_maker"] == "CEO"


def test_a_custom_pipeline_must_keep_won_and_lost_last_and_their_handoff_fields() -> None:
    ok = [
        Stage("lead_in", 0.1),
        Stage("demo", 0.4, ("demo_date",)),
        Stage("won", 1.0, ("amount", "products", "commitments", "po_number")),
        Stage("lost", 0.0, ("lost_reason",)),
    ]
    assert build_pipeline(ok, 2).version == 2

    problems = pipeline_problems(
        [
            Stage("Won", 1.2),
            Stage("won", 1.0, ("amount",)),
            Stage("demo", 0.5, ("bad-name", "x", "x")),
            Stage("demo", 0.5),
        ]
    )
    text = " | ".join(problems)
    assert "'Won' must be lower-case" in text
    assert "probability must be between 0 and 1" in text
    assert "duplicate stage names: ['demo']" in text
    assert "must contain the closed stage 'lost'" in text
    assert "'won' and 'lost' must come after every open stage" in text
    assert "must require ['products', 'commitments']" in text
    assert "field name 'bad-name'" in text
    assert "a required field is listed twice" in text
    with pytest.raises(RuleViolation) as err:
        build_pipeline(
            [Stage("won", 1.0, ("amount", "products", "commitments")), Stage("lost", 0.0, ("lost_reason",))],
            2,
        )
    assert "at least one open stage" in err.value.message
    assert pipeline_problems([]) != []


def test_removed_stages() -> None:
    new = Pipeline((Stage("qualification", 0.1), *DEFAULT_PIPELINE.stages[4:]), 2)
    assert removed_stages(DEFAULT_PIPELINE, new) == ["discovery", "proposal", "negotiation"]


# -- round-robin -----------------------------------------------------------------------------


def test_round_robin_takes_turns_by_user_id_whatever_the_roster_order() -> None:
    picks = [round_robin(["cleo", "amir", "bea"], n) for n in range(7)]
    assert picks == ["amir", "bea", "cleo", "amir", "bea", "cleo", "amir"]
    assert round_robin(["bea", "amir", "amir"], 1) == "bea"  # duplicates count once
    assert round_robin([], 5) is None
    assert rotation(["b", "a"]) == ["a", "b"]


def test_round_robin_is_fair_over_any_window() -> None:
    reps = ["a", "b", "c"]
    picks = [round_robin(reps, n) for n in range(300)]
    assert {r: picks.count(r) for r in reps} == {"a": 100, "b": 100, "c": 100}
    for start in range(10):  # any 3 consecutive counter values hit each rep once
        assert sorted(round_robin(reps, n) or "" for n in range(start, start + 3)) == reps


def test_upsell_goes_to_the_active_account_owner_else_round_robin_else_stays_with_them() -> None:
    own = plan_upsell_owner("bea", ["amir", "bea"])
    assert (own.owner, own.how, own.uses_counter) == ("bea", AssignedBy.ACCOUNT_OWNER, False)
    rr = plan_upsell_owner("gone", ["amir", "bea"])
    assert (rr.owner, rr.how, rr.uses_counter) == (None, AssignedBy.ROUND_ROBIN, True)
    nobody = plan_upsell_owner("gone", [])
    assert (nobody.owner, nobody.uses_counter) == ("gone", False)


# -- inbox and verdicts ----------------------------------------------------------------------


def test_response_due_and_overdue() -> None:
    due = response_due_at(NOW, 60)
    assert due == NOW + timedelta(hours=1)
    assert not is_overdue(InboxStatus.PENDING, due, due)
    assert is_overdue(InboxStatus.PENDING, due, due + timedelta(seconds=1))
    assert not is_overdue(InboxStatus.ACCEPTED, due, due + timedelta(days=1))
    assert responded_within_sla(due, None) is None
    assert responded_within_sla(due, due) is True
    assert responded_within_sla(due, due + timedelta(minutes=1)) is False


def test_sla_bounds() -> None:
    assert check_sla_minutes(5) == 5
    for bad in (0, -1, 7 * 24 * 60 + 1):
        with pytest.raises(RuleViolation):
            check_sla_minutes(bad)


def test_the_owner_or_a_manager_gives_one_verdict() -> None:
    check_verdict(InboxStatus.PENDING, "rita", REP)
    check_verdict(InboxStatus.PENDING, "rita", MANAGER)
    check_verdict(InboxStatus.PENDING, None, MANAGER)
    with pytest.raises(Forbidden):
        check_verdict(InboxStatus.PENDING, "rita", OTHER)
    with pytest.raises(Forbidden):
        check_verdict(InboxStatus.PENDING, None, REP)  # unassigned: managers only
    for decided in (InboxStatus.ACCEPTED, InboxStatus.REJECTED, InboxStatus.RECYCLED):
        with pytest.raises(Conflict):
            check_verdict(decided, "rita", REP)
    # Someone else's rep is refused before learning the item's state.
    with pytest.raises(Forbidden):
        check_verdict(InboxStatus.ACCEPTED, "rita", OTHER)


def test_only_pending_items_are_assigned() -> None:
    check_assign(InboxStatus.PENDING)
    with pytest.raises(Conflict):
        check_assign(InboxStatus.REJECTED)


# -- access ----------------------------------------------------------------------------------


def test_reps_reach_their_own_book_and_managers_the_team() -> None:
    assert can_access(REP, "rita")
    assert not can_access(REP, "otto")
    assert not can_access(REP, None)
    assert can_access(MANAGER, "otto")
    with pytest.raises(Forbidden):
        require_access(OTHER, "rita", "opportunity")
    assert owner_scope(REP, None) == "rita"
    assert owner_scope(REP, "otto") == "rita"  # a rep cannot widen their view
    assert owner_scope(MANAGER, None) is None
    assert owner_scope(MANAGER, "otto") == "otto"
    # analysts and executives reach a list only by a grant, and then read the team's (pseudonymised)
    assert owner_scope(Actor("ana", "ana", frozenset({"analyst"})), None) is None
    assert owner_scope(Actor("eve", "eve", frozenset({"executive"})), "otto") == "otto"
    assert owner_scope(Actor("ana", "ana", frozenset({"analyst", "sales_rep"})), None) == "ana"  # a rep
    assert is_manager(Actor.of("x", ["admin"]))
    assert is_manager(Actor.of("x", ["sales_manager", "sales_rep"]))
    assert not is_manager(Actor.of("x", ["sales_rep", "analyst"]))
    # The forecast: analysts see the team like managers; a rep only their own book.
    assert forecast_scope(Actor.of("x", ["analyst"]), None) is None
    assert forecast_scope(Actor.of("x", ["analyst"]), "otto") == "otto"
    assert forecast_scope(REP, None) == "rita"


# -- opportunity helpers ---------------------------------------------------------------------


def test_status_follows_the_stage() -> None:
    assert status_for_stage("won") == OpportunityStatus.WON
    assert status_for_stage("lost") == OpportunityStatus.LOST
    assert status_for_stage("proposal") == OpportunityStatus.OPEN
    check_open_for_edit(OpportunityStatus.OPEN)
    with pytest.raises(Conflict):
        check_open_for_edit(OpportunityStatus.WON)


def test_contacts_merge_by_email_case_insensitively() -> None:
    lead = {"name": "Ada", "email": "ada@x.io", "phone": None, "role": None}
    merged = merge_contacts(
        [lead],
        [
            {"name": "Ada L.", "email": "ADA@x.io", "phone": "+1", "role": None},
            {"name": "Bob", "email": "bob@x.io", "phone": None, "role": "CFO"},
        ],
    )
    assert merged == [
        {"name": "Ada L.", "email": "ada@x.io", "phone": "+1", "role": None},
        {"name": "Bob", "email": "bob@x.io", "phone": None, "role": "CFO"},
    ]
    assert lead["name"] == "Ada"  # inputs untouched


def test_each_commitment_gets_its_own_id_and_keeps_one_it_has() -> None:
    ids = (f"c{n}" for n in itertools.count(1))
    out = with_commitment_ids(
        [{"description": "SSO by June"}, {"description": "kept", "commitment_id": "old"}],
        lambda: next(ids),
    )
    assert [c["commitment_id"] for c in out] == ["c1", "old"]
    flags = [CommitmentFlag(f"f{n}", "c1", True, "acc", "no", "cs", NOW, NOW) for n in range(2)]
    assert flagged_commitments(flags) == {"c1"}


def test_only_quotes_carry_an_amount_and_nothing_happens_in_the_future() -> None:
    check_activity(ActivityType.QUOTE, Decimal("900.00"), NOW, NOW)
    check_activity(ActivityType.CALL, None, NOW + timedelta(minutes=4), NOW)
    with pytest.raises(RuleViolation, match="only a quote"):
        check_activity(ActivityType.CALL, Decimal("10.00"), NOW, NOW)
    with pytest.raises(RuleViolation, match="future"):
        check_activity(ActivityType.VISIT, None, NOW + timedelta(hours=1), NOW)


# -- forecast --------------------------------------------------------------------------------


def test_forecast_weights_each_stage_by_its_probability() -> None:
    f = forecast(
        DEFAULT_PIPELINE,
        [
            StageTotal("qualification", 2, Decimal("1000.0")),
            StageTotal("proposal", 1, Decimal("4000.0")),
            StageTotal("proposal", 1, Decimal("2000.0")),  # a second currency row of the same stage
            StageTotal("negotiation", 1, Decimal("10000.0")),
            StageTotal("won", 1, Decimal("5000.0")),
            StageTotal("lost", 3, Decimal("9000.0")),
        ],
    )
    rows = {s.stage: s for s in f.stages}
    assert [s.stage for s in f.stages] == DEFAULT_PIPELINE.names
    assert rows["qualification"].weighted == 100.0
    assert (rows["proposal"].count, rows["proposal"].value, rows["proposal"].weighted) == (2, 6000.0, 3000.0)
    assert rows["discovery"].count == 0
    assert rows["discovery"].value == 0.0
    assert rows["lost"].weighted == 0.0
    assert f.open_count == 5
    assert f.open_value == 17000.0
    assert f.weighted_open == 100.0 + 3000.0 + 7000.0
    assert f.won_value == 5000.0
    assert f.weighted_forecast == 100.0 + 3000.0 + 7000.0 + 5000.0


def test_forecast_of_an_empty_book_and_of_a_stage_no_longer_configured() -> None:
    empty = forecast(DEFAULT_PIPELINE, [])
    assert empty.weighted_forecast == 0.0
    assert empty.open_count == 0
    assert len(empty.stages) == len(DEFAULT_PIPELINE.stages)
    legacy = forecast(DEFAULT_PIPELINE, [StageTotal("pilot", 1, Decimal("100.0"))])
    assert legacy.stages[-1].stage == "pilot"
    assert legacy.stages[-1].probability == 0.0
    assert legacy.open_value == 100.0


def test_forecast_money_is_exact_to_the_cent() -> None:
    # Binary floats make 0.1 + 0.2 != 0.3 and 0.35 x 10.05 = 3.5174999...; exact decimals do not.
    pipeline = Pipeline(
        version=2,
        stages=(
            Stage("qualification", 0.35, ()),
            Stage("won", 1.0, ("amount", "products", "commitments")),
            Stage("lost", 0.0, ("lost_reason",)),
        ),
    )
    f = forecast(
        pipeline,
        [
            StageTotal("qualification", 1, Decimal("0.10")),
            StageTotal("qualification", 1, Decimal("0.20")),
            StageTotal("qualification", 1, Decimal("9.75")),
            StageTotal("won", 1, Decimal("999999999999.99")),
        ],
    )
    rows = {s.stage: s for s in f.stages}
    assert rows["qualification"].value == Decimal("10.05")
    assert rows["qualification"].weighted == Decimal("3.52")  # 3.5175 half-even to the cent
    assert f.won_value == Decimal("999999999999.99")
    assert f.weighted_forecast == Decimal("1000000000003.51")
