"""Marketing's pure rules: scoring, merge, status transitions, qualification, verdicts. No I/O."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pydantic
import pytest
from crm_contracts.events.common import Behaviour
from crm_contracts.events.common import Consent as ConsentV1
from crm_contracts.events.leads import LeadCapturedV2
from crm_platform.actor import Actor
from leads.domain import leads as d
from leads.domain.leads import Capture, Lead, LeadStatus
from leads.domain.scoring import (
    DEFAULT_RULES,
    BehaviourRule,
    InvalidRules,
    Preview,
    RulesAuthor,
    ScoringRules,
    next_version,
    preview,
    score,
    validate_rules,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PV, EO, FS, TS = (Behaviour.PAGE_VIEW, Behaviour.EMAIL_OPEN, Behaviour.FORM_SUBMIT, Behaviour.TRIAL_SIGNUP)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def capture(**overrides: object) -> Capture:
    values: dict[str, object] = {
        "email": "Ada@Example.com",
        "name": "Ada Lovelace",
        "source_channel": "webinar",
        "marketing_email": True,
        "company": "Analytical Engines",
        "campaign": "q1-launch",
    }
    values.update(overrides)
    return Capture(**values)  # type: ignore[arg-type]


def lead(**overrides: object) -> Lead:
    return dataclasses.replace(Lead.new("lead-1", capture(), T0), **overrides)  # type: ignore[arg-type]


def behave(
    x: Lead, *behaviours: Behaviour, rules: ScoringRules = DEFAULT_RULES, start: float = 1
) -> tuple[Lead, list[d.BehaviourOutcome]]:
    outcomes = []
    for i, b in enumerate(behaviours):
        out = x.record_behaviour(b, at(start + i), rules, at(start + i))
        outcomes.append(out)
        x = out.lead
    return x, outcomes


# -- scoring ---------------------------------------------------------------------------------


def test_default_rules_are_the_documented_ones() -> None:
    assert DEFAULT_RULES.rules[PV] == BehaviourRule(5, 10)
    assert DEFAULT_RULES.rules[EO] == BehaviourRule(3, 10)
    assert DEFAULT_RULES.rules[FS] == BehaviourRule(20, None)
    assert DEFAULT_RULES.rules[TS] == BehaviourRule(40, None)
    assert DEFAULT_RULES.threshold == 60
    assert DEFAULT_RULES.version == 1
    validate_rules(DEFAULT_RULES.rules, DEFAULT_RULES.threshold)


def test_score_sums_weight_times_count_with_reasons_per_behaviour() -> None:
    s = score({PV: 3, FS: 1}, DEFAULT_RULES)
    assert s.total == 35
    assert [(r.behaviour, r.count, r.counted, r.points) for r in s.reasons] == [
        (PV, 3, 3, 15.0),
        (FS, 1, 1, 20.0),
    ]
    assert not s.qualifies
    assert s.rules_version == 1
    assert s.threshold == 60


def test_cap_limits_counted_occurrences_but_reason_keeps_the_real_count() -> None:
    s = score({PV: 25}, DEFAULT_RULES)
    assert s.total == 50
    (reason,) = s.reasons
    assert (reason.count, reason.counted, reason.points) == (25, 10, 50.0)


def test_uncapped_behaviour_counts_every_occurrence() -> None:
    assert score({FS: 7}, DEFAULT_RULES).total == 140


def test_score_reaching_the_threshold_exactly_qualifies() -> None:
    s = score({TS: 1, FS: 1}, DEFAULT_RULES)
    assert s.total == 60
    assert s.qualifies


def test_no_behaviour_scores_zero_with_no_reasons() -> None:
    s = score({}, DEFAULT_RULES)
    assert s.total == 0
    assert s.reasons == ()


@pytest.mark.parametrize(
    ("rules", "threshold", "field"),
    [
        ({**DEFAULT_RULES.rules, PV: BehaviourRule(-1, None)}, 60, "rules.page_view.weight"),
        ({**DEFAULT_RULES.rules, EO: BehaviourRule(float("nan"), None)}, 60, "rules.email_open.weight"),
        ({**DEFAULT_RULES.rules, FS: BehaviourRule(1, 0)}, 60, "rules.form_submit.cap"),
        (DEFAULT_RULES.rules, 0, "threshold"),
        (DEFAULT_RULES.rules, -5, "threshold"),
        ({PV: BehaviourRule(1, None)}, 60, "rules.email_open"),
    ],
)
def test_invalid_rules_name_the_field(
    rules: dict[Behaviour, BehaviourRule], threshold: float, field: str
) -> None:
    with pytest.raises(InvalidRules) as err:
        validate_rules(rules, threshold)
    assert err.value.field == field


def test_zero_weight_is_allowed() -> None:
    validate_rules({**DEFAULT_RULES.rules, PV: BehaviourRule(0, None)}, 1)


def test_next_version_increments_and_records_who() -> None:
    who = RulesAuthor("u-1", "mia")
    new = next_version(
        DEFAULT_RULES,
        {**DEFAULT_RULES.rules, TS: BehaviourRule(70)},
        50,
        author=who,
        at=T0,
        note="trials convert",
    )
    assert new.version == 2
    assert new.changed_by == who
    assert new.changed_at == T0
    assert new.note == "trials convert"
    assert new.rules[TS].weight == 70
    assert new.threshold == 50
    assert list(new.rules) == list(Behaviour)
    with pytest.raises(InvalidRules):
        next_version(new, new.rules, 0, author=who, at=T0)


# -- capture and merge -----------------------------------------------------------------------


def test_normalize_email_trims_and_case_folds() -> None:
    assert d.normalize_email("  Ada@Example.COM \n") == "ada@example.com"


def test_new_lead_starts_new_with_origin_and_one_touch() -> None:
    x = Lead.new("lead-1", capture(email=" ADA@example.com "), T0)
    assert x.email == "ada@example.com"
    assert x.status == LeadStatus.NEW
    assert x.origin_channel == "webinar"
    assert x.touch_count == 1
    assert x.touches == (d.Touch("webinar", "q1-launch", T0),)
    assert x.consent == d.Consent(True, T0)
    assert x.score == 0


def test_a_new_lead_is_the_lead_its_constructor_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lead.new sets the fields without the frozen dataclass's per-field ``__init__`` (every
    bulk-captured and imported lead): the same lead, every field set, still frozen, with
    mappings of its own."""
    given = capture(email=" ADA@example.com ", company="  ", custom={"seats": 12})
    expected = Lead(
        id="lead-1",
        email="ada@example.com",
        name="Ada Lovelace",
        company=None,
        origin_channel="webinar",
        campaign="q1-launch",
        consent=d.Consent(True, T0),
        status=LeadStatus.NEW,
        created_at=T0,
        updated_at=T0,
        touches=(d.Touch("webinar", "q1-launch", T0),),
        custom={"seats": 12},
    )

    def field_by_field(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Lead.new went through the dataclass's __init__")

    monkeypatch.setattr(Lead, "__init__", field_by_field)
    first, second = Lead.new("lead-1", given, T0), Lead.new("lead-2", capture(), T0)
    assert first == expected
    assert list(vars(first)) == [f.name for f in dataclasses.fields(Lead)], "every field, in order"
    assert all(v is not d._UNSET for v in vars(first).values()), "no field left without a value"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "changed"  # type: ignore[misc]
    assert first.custom is not given.custom, "its own custom map, not the capture's"
    assert first.behaviour_totals is not second.behaviour_totals
    assert first.cycle_counts is not second.cycle_counts


def _captured_validated(x: Lead, given: Capture, merged: bool) -> LeadCapturedV2:
    """``lead.captured`` v2 as the model's validation makes it (what captured_event built before)."""
    return LeadCapturedV2(
        lead_id=x.id,
        email=x.email,
        name=x.name,
        company=x.company or "",
        source_channel=given.source_channel,
        campaign=given.campaign,
        consent=ConsentV1(marketing_email=x.consent.marketing_email, captured_at=x.consent.captured_at),
        merged=merged,
        custom={},
    )


class _Refused:
    """A model's validator that fails the test when called."""

    def validate_python(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("validated")


@pytest.mark.parametrize(
    "given",
    [
        capture(),
        capture(email=" ADA@example.com ", company=None, campaign=None, marketing_email=False),
        capture(company="  ", name="Ada  Lovelace ", source_channel="web_form"),
    ],
)
@pytest.mark.parametrize("merged", [False, True])
def test_a_captured_event_is_the_one_its_model_validates_without_running_the_validation(
    monkeypatch: pytest.MonkeyPatch, given: Capture, merged: bool
) -> None:
    """captured_event builds ``lead.captured`` v2 without the model's validation (every bulk-
    captured and imported lead) when each value is one it keeps as it is: the same event, field
    by field and type by type, the same fields set, the same JSON form."""
    x = Lead.new("lead-1", given, T0)
    expected = _captured_validated(x, given, merged)
    monkeypatch.setattr(LeadCapturedV2, "__pydantic_validator__", _Refused())
    monkeypatch.setattr(ConsentV1, "__pydantic_validator__", _Refused())
    event = x.captured_event(given, merged)
    assert type(event) is LeadCapturedV2
    assert type(event.consent) is ConsentV1
    assert event == expected
    assert [(k, type(v)) for k, v in vars(event).items()] == [(k, type(v)) for k, v in vars(expected).items()]
    assert vars(event.consent) == vars(expected.consent)
    assert event.model_fields_set == expected.model_fields_set
    assert event.consent.model_fields_set == expected.consent.model_fields_set
    assert event.to_payload() == expected.to_payload()
    assert event.model_dump_json() == expected.model_dump_json()
    with pytest.raises(pydantic.ValidationError):  # still a frozen model
        event.name = "changed"  # type: ignore[misc]


class _Channel(StrEnum):
    WEBINAR = "webinar"


def test_a_captured_event_the_validation_would_change_or_refuse_is_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Values the model's validation would change (a ``StrEnum`` member becomes its plain value),
    custom values (their bounds are the model's) and values it refuses (an e-mail that is no
    address, a time without a zone) go through the validation, as before."""
    enum_channel = capture(source_channel=_Channel.WEBINAR)
    x = Lead.new("lead-1", enum_channel, T0)
    event = x.captured_event(enum_channel, False)
    assert event == _captured_validated(x, enum_channel, False)
    assert type(event.source_channel) is str
    with_custom = Lead.new("lead-1", capture(custom={"seats": 12}), T0)
    monkeypatch.setattr(d, "to_extensions", lambda _fields, values: dict(values))
    with pytest.raises(pydantic.ValidationError, match=r"custom\.seats"):  # the model checks the map
        with_custom.captured_event(capture(), False)
    with pytest.raises(pydantic.ValidationError):
        dataclasses.replace(x, email="not an address").captured_event(capture(), False)
    naive = dataclasses.replace(x, consent=d.Consent(True, T0.replace(tzinfo=None)))
    with pytest.raises(pydantic.ValidationError):
        naive.captured_event(capture(), False)


def test_merge_fills_empty_fields_keeps_filled_ones_and_the_origin() -> None:
    first = Lead.new("lead-1", capture(company=None, campaign=None), T0)
    merged = first.merge(
        capture(
            email="ada@EXAMPLE.com ",
            name="A. Lovelace",
            company="Engines Ltd",
            campaign="spring",
            source_channel="trade_show",
        ),
        at(10),
    )
    assert merged.id == "lead-1"
    assert merged.name == "Ada Lovelace"  # filled: kept
    assert merged.company == "Engines Ltd"  # empty: filled
    assert merged.campaign == "spring"  # empty: filled
    assert merged.origin_channel == "webinar"  # the first channel stays the origin
    assert merged.touch_count == 2
    assert merged.touches[-1] == d.Touch("trade_show", "spring", at(10))
    assert merged.created_at == T0
    assert merged.updated_at == at(10)


def test_merge_keeps_a_filled_company_even_if_the_new_capture_differs() -> None:
    merged = lead().merge(capture(company="Other Co"), at(1))
    assert merged.company == "Analytical Engines"


def test_merge_blank_strings_do_not_overwrite_or_fill() -> None:
    first = Lead.new("lead-1", capture(company="  ", campaign=""), T0)
    assert first.company is None
    assert first.campaign is None
    assert first.merge(capture(company=" "), at(1)).company is None


def test_merge_consent_follows_the_latest_statement() -> None:
    opted_out = lead().merge(capture(marketing_email=False), at(5))
    assert opted_out.consent == d.Consent(False, at(5))
    assert opted_out.merge(capture(marketing_email=True), at(6)).consent.marketing_email


def test_merge_does_not_change_status_or_score() -> None:
    x, _ = behave(lead(), TS)
    merged = x.merge(capture(), at(30))
    assert merged.status == x.status == LeadStatus.NURTURING
    assert merged.score == x.score


def test_merge_refuses_a_different_email() -> None:
    with pytest.raises(ValueError, match="same email"):
        lead().merge(capture(email="bob@example.com"), at(1))


def test_merge_keeps_only_the_latest_touches_but_counts_them_all() -> None:
    x = lead()
    for i in range(d.MAX_TOUCHES_KEPT + 5):
        x = x.merge(capture(source_channel=f"c{i}"), at(i + 1))
    assert x.touch_count == d.MAX_TOUCHES_KEPT + 6
    assert len(x.touches) == d.MAX_TOUCHES_KEPT
    assert x.touches[-1].channel == f"c{d.MAX_TOUCHES_KEPT + 4}"
    assert x.origin_channel == "webinar"


# -- status transitions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (LeadStatus.NEW, LeadStatus.NURTURING),
        (LeadStatus.NURTURING, LeadStatus.QUALIFIED),
        (LeadStatus.QUALIFIED, LeadStatus.ACCEPTED),
        (LeadStatus.QUALIFIED, LeadStatus.REJECTED),
        (LeadStatus.QUALIFIED, LeadStatus.RECYCLED),
        (LeadStatus.RECYCLED, LeadStatus.NURTURING),
    ],
)
def test_allowed_transitions(current: LeadStatus, target: LeadStatus) -> None:
    assert d.transition(current, target) == target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (LeadStatus.NEW, LeadStatus.QUALIFIED),
        (LeadStatus.NEW, LeadStatus.ACCEPTED),
        (LeadStatus.NURTURING, LeadStatus.ACCEPTED),
        (LeadStatus.QUALIFIED, LeadStatus.NURTURING),
        (LeadStatus.ACCEPTED, LeadStatus.NURTURING),
        (LeadStatus.REJECTED, LeadStatus.QUALIFIED),
        (LeadStatus.RECYCLED, LeadStatus.ACCEPTED),
    ],
)
def test_forbidden_transitions(current: LeadStatus, target: LeadStatus) -> None:
    with pytest.raises(d.InvalidTransition):
        d.transition(current, target)


def test_every_status_has_a_transition_entry() -> None:
    assert set(d.TRANSITIONS) == set(LeadStatus)


# -- behaviour and qualification -------------------------------------------------------------


def test_first_behaviour_moves_new_to_nurturing_and_scores() -> None:
    x, (out,) = behave(lead(), PV)
    assert x.status == LeadStatus.NURTURING
    assert x.score == 5
    assert x.behaviour_totals == {PV: 1}
    assert x.rules_version == 1
    assert x.threshold == 60
    assert x.last_behaviour_at == at(1)
    assert not out.qualified
    assert out.in_cycle


def test_crossing_the_threshold_qualifies_once() -> None:
    x, outs = behave(lead(), FS, TS, PV, TS)
    assert [o.qualified for o in outs] == [False, True, False, False]
    assert x.status == LeadStatus.QUALIFIED
    assert x.handoff_count == 1
    assert x.qualified_at == at(2)
    assert x.score == 105  # still re-scored after the handoff


def test_a_single_behaviour_can_take_a_new_lead_straight_to_qualified() -> None:
    rules = dataclasses.replace(DEFAULT_RULES, threshold=30)
    x, (out,) = behave(lead(), TS, rules=rules)
    assert out.qualified
    assert x.status == LeadStatus.QUALIFIED


def test_rules_change_applies_on_the_next_behaviour() -> None:
    x, _ = behave(lead(), FS, FS)  # 40 < 60
    assert x.status == LeadStatus.NURTURING
    lower = dataclasses.replace(DEFAULT_RULES, threshold=45, version=2)
    x, (out,) = behave(x, PV, rules=lower, start=5)
    assert out.qualified
    assert x.rules_version == 2
    assert x.threshold == 45


def test_reasons_are_kept_on_the_lead() -> None:
    x, _ = behave(lead(), PV, PV, EO)
    assert [(r.behaviour, r.count, r.points) for r in x.score_reasons] == [(PV, 2, 10.0), (EO, 1, 3.0)]


def test_behaviour_on_accepted_or_rejected_lead_is_scored_but_never_handed_off() -> None:
    qualified, _ = behave(lead(), TS, FS)
    for verdict in ("accepted", "rejected"):
        closed = qualified.apply_verdict(verdict, None, at(10), at(10)).lead
        x, outs = behave(closed, TS, TS, start=20)
        assert x.status == closed.status
        assert not any(o.qualified for o in outs)
        assert x.handoff_count == 1
        assert x.score == 140


def test_behaviour_summary_lists_lifetime_counts() -> None:
    x, _ = behave(lead(), PV, PV, FS)
    assert x.behaviour_summary() == {PV: 2, FS: 1}


def test_last_behaviour_at_keeps_the_latest_even_when_a_late_one_arrives() -> None:
    x, _ = behave(lead(), PV, start=10)
    late = x.record_behaviour(PV, at(2), DEFAULT_RULES, at(12)).lead
    assert late.last_behaviour_at == at(10)


def test_occurred_at_in_the_future_beyond_skew_is_a_problem() -> None:
    assert d.occurred_at_problem(at(4), T0) is None
    assert d.occurred_at_problem(at(-600), T0) is None
    assert d.occurred_at_problem(at(6), T0) is not None


# -- verdicts ----------------------------------------------------------------------------------


def qualified_lead() -> Lead:
    x, _ = behave(lead(), TS, FS)
    assert x.status == LeadStatus.QUALIFIED
    return x


@pytest.mark.parametrize(
    ("verdict", "status"),
    [("accepted", LeadStatus.ACCEPTED), ("rejected", LeadStatus.REJECTED), ("recycled", LeadStatus.RECYCLED)],
)
def test_verdict_on_qualified_lead_sets_status(verdict: str, status: LeadStatus) -> None:
    out = qualified_lead().apply_verdict(
        verdict, "no_budget" if verdict == "rejected" else None, at(30), at(31)
    )
    assert out.applied
    assert out.lead.status == status
    assert out.lead.verdict == verdict
    assert out.lead.verdict_at == at(30)
    assert out.lead.updated_at == at(31)


def test_rejection_keeps_the_reason_code() -> None:
    out = qualified_lead().apply_verdict("rejected", "competitor", at(30), at(30))
    assert out.lead.verdict_reason_code == "competitor"


@pytest.mark.parametrize("status", [s for s in LeadStatus if s != LeadStatus.QUALIFIED])
def test_verdict_for_a_lead_not_qualified_is_ignored(status: LeadStatus) -> None:
    x = lead(status=status)
    out = x.apply_verdict("accepted", None, at(30), at(30))
    assert not out.applied
    assert out.lead is x
    assert out.ignored_because is not None
    assert status.value in out.ignored_because


def test_a_second_verdict_is_ignored() -> None:
    accepted = qualified_lead().apply_verdict("accepted", None, at(30), at(30)).lead
    again = accepted.apply_verdict("rejected", "no_need", at(31), at(31))
    assert not again.applied
    assert again.lead.status == LeadStatus.ACCEPTED


def test_unknown_verdict_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown verdict"):
        qualified_lead().apply_verdict("maybe", None, at(30), at(30))


def test_recycling_restarts_the_scoring_cycle() -> None:
    out = qualified_lead().apply_verdict("recycled", "bad_timing", at(30), at(30))
    x = out.lead
    assert x.status == LeadStatus.RECYCLED
    assert x.score == 0
    assert x.score_reasons == ()
    assert x.cycle_counts == {}
    assert x.cycle_started_at == at(30)
    assert x.recycle_count == 1
    assert x.behaviour_totals == {TS: 1, FS: 1}  # lifetime kept for the summary
    assert x.verdict_reason_code == "bad_timing"


def test_recycled_lead_is_handed_off_again_once_its_new_score_crosses_the_threshold() -> None:
    recycled = qualified_lead().apply_verdict("recycled", None, at(30), at(30)).lead
    x, outs = behave(recycled, PV, start=40)
    assert x.status == LeadStatus.NURTURING  # back to nurturing, not straight back to sales
    assert x.score == 5
    assert not outs[0].qualified
    x, outs = behave(x, FS, TS, PV, start=41)
    assert [o.qualified for o in outs] == [False, True, False]
    assert x.status == LeadStatus.QUALIFIED
    assert x.handoff_count == 2
    assert x.qualified_at == at(42)
    assert x.behaviour_summary() == {PV: 2, FS: 2, TS: 2}
    assert {r.behaviour: r.count for r in x.score_reasons} == {PV: 2, FS: 1, TS: 1}


def test_behaviour_that_occurred_before_the_recycle_is_kept_but_not_scored() -> None:
    recycled = qualified_lead().apply_verdict("recycled", None, at(30), at(30)).lead
    out = recycled.record_behaviour(TS, at(20), DEFAULT_RULES, at(35))
    assert not out.in_cycle
    assert out.lead.status == LeadStatus.RECYCLED
    assert out.lead.score == 0
    assert out.lead.behaviour_totals[TS] == 2
    assert not out.qualified


# -- behaviours in a batch -----------------------------------------------------------------------


def test_a_batch_of_behaviours_has_exactly_the_effects_of_recording_them_one_by_one() -> None:
    ada, bob = lead(), Lead.new("lead-2", capture(email="bob@example.com"), T0)
    ids = iter(f"b{i}" for i in range(100))
    by = Actor.of("tracker", ["marketing"])
    inputs = [
        d.BehaviourInput("lead-1", FS, at(1), external_id="e1"),
        d.BehaviourInput("lead-2", PV, at(2)),
        d.BehaviourInput("lead-1", TS, at(3)),
        d.BehaviourInput("lead-1", FS, at(4), external_id="e1"),  # the tracker sent e1 twice
        d.BehaviourInput("lead-1", PV, None),  # no time: when the batch is recorded
    ]
    batch = d.record_batch(
        {"lead-1": ada, "lead-2": bob}, {}, inputs, DEFAULT_RULES, now=at(10), new_id=lambda: next(ids), by=by
    )

    one_by_one, outcomes = behave(ada, FS, start=1)
    second = one_by_one.record_behaviour(TS, at(3), DEFAULT_RULES, at(10))
    third = second.lead.record_behaviour(PV, at(10), DEFAULT_RULES, at(10))
    assert [i.duplicate for i in batch.items] == [False, False, False, True, False]
    assert [i.qualified_now for i in batch.items] == [False, False, True, False, False]
    assert batch.items[3].behaviour_id == batch.items[0].behaviour_id, "the duplicate names the first"
    assert batch.items[2].lead.score == second.lead.score
    assert batch.items[2].lead.status == LeadStatus.QUALIFIED
    assert batch.items[2].events
    assert [type(e).__name__ for e in batch.items[2].events] == [type(e).__name__ for e in second.events]
    assert batch.items[3].events == (), "a duplicate emits nothing"
    assert [r.id for r in batch.records] == ["b0", "b1", "b2", "b3"], "duplicates are not stored again"
    assert batch.records[3].occurred_at == at(10)
    final = {x.id: x for x in batch.leads}
    assert list(final) == ["lead-1", "lead-2"], "each changed lead once, in its final state"
    assert final["lead-1"].score == third.lead.score
    assert final["lead-1"].behaviour_totals == third.lead.behaviour_totals
    assert final["lead-1"].cycle_counts == third.lead.cycle_counts
    assert outcomes[0].lead.score == batch.items[0].lead.score


def test_a_behaviour_already_stored_is_a_duplicate_in_a_batch_too() -> None:
    by = Actor.of("tracker", ["marketing"])
    first = d.record_batch(
        {"lead-1": lead()},
        {},
        [d.BehaviourInput("lead-1", TS, at(1), external_id="e9")],
        DEFAULT_RULES,
        now=at(2),
        new_id=lambda: "r1",
        by=by,
    )
    again = d.record_batch(
        {"lead-1": first.leads[0]},
        {("lead-1", "e9"): first.records[0]},
        [d.BehaviourInput("lead-1", TS, at(1), external_id="e9")],
        DEFAULT_RULES,
        now=at(3),
        new_id=lambda: "r2",
        by=by,
    )
    assert again.items[0].duplicate
    assert again.items[0].behaviour_id == "r1"
    assert again.records == ()
    assert again.leads == ()
    assert again.items[0].lead.score == first.leads[0].score


def test_a_rules_preview_counts_who_qualifies_with_the_current_rules_and_with_the_draft() -> None:
    current = ScoringRules(
        {
            Behaviour.PAGE_VIEW: BehaviourRule(5, 10),
            Behaviour.EMAIL_OPEN: BehaviourRule(3, 10),
            Behaviour.FORM_SUBMIT: BehaviourRule(20, None),
            Behaviour.TRIAL_SIGNUP: BehaviourRule(40, None),
        },
        threshold=60,
    )
    # Page views now count up to 20 and score 4; a trial signup scores 30; threshold 50.
    draft = ScoringRules(
        {
            **current.rules,
            Behaviour.PAGE_VIEW: BehaviourRule(4, 20),
            Behaviour.TRIAL_SIGNUP: BehaviourRule(30),
        },
        threshold=50,
        version=2,
    )
    cycles = [
        {},  # captured, nothing seen: 0 and 0
        {Behaviour.PAGE_VIEW: 15},  # 50 (capped at 10) -> 60: newly
        {Behaviour.TRIAL_SIGNUP: 1, Behaviour.FORM_SUBMIT: 1},  # 60 -> 50: both
        {Behaviour.TRIAL_SIGNUP: 1, Behaviour.EMAIL_OPEN: 7},  # 61 -> 51: both
        {Behaviour.TRIAL_SIGNUP: 1, Behaviour.PAGE_VIEW: 4},  # 60 -> 46: no longer
        {Behaviour.EMAIL_OPEN: 2},  # 6 -> 6: neither
    ]
    assert preview(cycles, current, draft) == Preview(
        leads=6, qualify_current=3, qualify_draft=3, newly=1, no_longer=1
    )
    assert preview([], current, draft) == Preview(0, 0, 0, 0, 0)
