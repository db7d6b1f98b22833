"""Every marketing handler against the in-memory fakes: no broker, no database."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import pytest
from crm_contracts import envelope_for
from crm_contracts.events.common import Behaviour
from crm_contracts.events.leads import (
    BehaviourRecordedV1,
    EditedField,
    LeadCapturedV1,
    LeadEditedV1,
    LeadQualifiedV1,
    LeadStatusChangedV1,
)
from crm_contracts.events.sales import LeadVerdictV1, RejectReason, Verdict
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock, to_millis
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from leads import handlers
from leads.domain.leads import Capture, Lead, LeadEdit, LeadStatus
from leads.domain.scoring import BehaviourRule
from leads.fakes import FakeLeadsUnit, InMemoryLeads
from pymongo.errors import DuplicateKeyError

T0 = datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
MIA = Actor.of("user-mia", ["marketing"], "mia")


def uow() -> FakeUnitOfWork[FakeLeadsUnit]:
    ids = (f"id-{n}" for n in itertools.count(1))
    return FakeUnitOfWork(FakeLeadsUnit(), clock=ManualClock(T0), new_id=lambda: next(ids))


def capture(email: str = "Ada@Example.com", **overrides: object) -> Capture:
    values: dict[str, object] = {
        "email": email,
        "name": "Ada Lovelace",
        "source_channel": "webinar",
        "marketing_email": True,
        "company": "Engines",
    }
    values.update(overrides)
    return Capture(**values)  # type: ignore[arg-type]


async def captured(u: FakeUnitOfWork[FakeLeadsUnit]) -> Lead:
    return (await handlers.capture_lead(u, capture())).lead


async def test_a_new_capture_stores_the_lead_and_emits_lead_captured() -> None:
    u = uow()
    outcome = await handlers.capture_lead(u, capture())
    assert not outcome.merged
    assert outcome.lead.id == "id-1"
    assert outcome.lead.email == "ada@example.com"
    assert outcome.lead.created_at == T0.replace(microsecond=123000), "MongoDB's millisecond precision"
    assert await u.unit.leads.get("id-1") == outcome.lead
    [event] = u.unit.emitted(LeadCapturedV1)
    assert (event.lead_id, event.merged) == ("id-1", False)
    assert u.unit.events[0].correlation_id == "id-1"


async def test_the_same_email_merges_into_the_one_lead() -> None:
    u = uow()
    await handlers.capture_lead(u, capture())
    again = await handlers.capture_lead(u, capture(" ADA@example.com", source_channel="trade_show"))
    assert again.merged
    assert list(u.unit.leads.items) == ["id-1"]
    assert again.lead.touch_count == 2
    assert [e.merged for e in u.unit.emitted(LeadCapturedV1)] == [False, True]


class StaleFirstRead(InMemoryLeads):
    """A rival request committed this email after our read: the first lookup misses it."""

    misses = [1]  # on the class: a rolled-back unit (a deep copy) must not reset it

    async def get_by_email(self, email: str) -> Lead | None:
        if self.misses[0]:
            self.misses[0] -= 1
            return None
        return await super().get_by_email(email)


async def test_a_capture_that_loses_the_race_for_the_email_merges_on_its_retry() -> None:
    u = uow()
    u.unit.leads = StaleFirstRead()
    await u.unit.leads.add(Lead.new("rival", capture(), T0))
    outcome = await handlers.capture_lead(u, capture())
    assert outcome.merged, "the unique email refused the insert; the retry merged into the rival"
    assert outcome.lead.id == "rival"
    assert list(u.unit.leads.items) == ["rival"]
    assert [e.merged for e in u.unit.emitted(LeadCapturedV1)] == [True], "the failed attempt emitted nothing"


async def test_bulk_capture_has_the_effects_of_its_captures_one_by_one_in_order() -> None:
    u = uow()
    known = await captured(u)  # id-1
    outcomes = await handlers.capture_leads(
        u,
        [
            capture("grace@example.com"),
            capture(" ADA@example.com ", source_channel="trade_show", company="Other"),
            capture("grace@example.com", source_channel="import"),
        ],
    )
    assert [(o.lead.id, o.merged) for o in outcomes] == [("id-2", False), ("id-1", True), ("id-2", True)]
    assert u.commits == 2, "the whole batch is one unit of work"
    stored_ada, stored_grace = await u.unit.leads.get("id-1"), await u.unit.leads.get("id-2")
    assert stored_ada == outcomes[1].lead
    assert stored_ada is not None
    assert stored_ada.company == known.company, "filled fields are kept, as one by one"
    assert stored_grace == outcomes[2].lead
    assert stored_grace is not None
    assert [t.channel for t in stored_grace.touches] == ["webinar", "import"], "merged within the batch"
    events = u.unit.events[1:]
    assert [(e.event.lead_id, e.event.merged) for e in events] == [  # type: ignore[attr-defined]
        ("id-2", False),
        ("id-1", True),
        ("id-2", True),
    ], "one lead.captured per capture, in the batch's order"
    assert [e.correlation_id for e in events] == ["id-2", "id-1", "id-2"]


async def test_bulk_capture_counts_its_leads_once_per_verdict_not_once_per_lead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``crm_leads_captured`` gets the batch's new and merged leads as one increment each: a
    labelled lookup and increment per lead was about 1.2 us of leads' CPU per bulk lead."""
    counted: list[tuple[str, float]] = []

    class Child:
        def __init__(self, merged: str) -> None:
            self.merged = merged

        def inc(self, amount: float = 1) -> None:
            counted.append((self.merged, amount))

    class Captured:
        @staticmethod
        def labels(merged: str) -> Child:
            return Child(merged)

    monkeypatch.setattr(handlers.metrics, "LEADS_CAPTURED", Captured)
    u = uow()
    await captured(u)
    counted.clear()
    captures = [capture(f"new-{n}@example.com") for n in range(5)] + [capture(), capture()]
    outcomes = await handlers.capture_leads(u, captures)
    assert [o.merged for o in outcomes] == [False] * 5 + [True, True]
    assert sorted(counted) == [("false", 5), ("true", 2)], "one increment per verdict"


class StaleFirstBatchRead(InMemoryLeads):
    """A rival request committed one of the batch's emails after our read."""

    misses = [1]

    async def get_many_by_email(self, emails: Collection[str]) -> dict[str, Lead]:
        if self.misses[0]:
            self.misses[0] -= 1
            return {}
        return await super().get_many_by_email(emails)


async def test_a_bulk_capture_that_loses_a_race_stores_nothing_then_merges_on_its_retry() -> None:
    u = uow()
    u.unit.leads = StaleFirstBatchRead()
    await u.unit.leads.add(Lead.new("rival", capture(), T0))
    outcomes = await handlers.capture_leads(u, [capture("grace@example.com"), capture()])
    assert [o.merged for o in outcomes] == [False, True]
    assert outcomes[1].lead.id == "rival"
    assert sorted(u.unit.leads.items) == sorted(["rival", outcomes[0].lead.id])
    assert [e.merged for e in u.unit.emitted(LeadCapturedV1)] == [False, True], (
        "the failed attempt emitted nothing"
    )


async def test_behaviour_is_recorded_scored_and_emitted() -> None:
    u = uow()
    lead = await captured(u)
    result = await handlers.record_behaviour(
        u,
        lead.id,
        Behaviour.PAGE_VIEW,
        occurred_at=None,
        meta={"page": "/pricing"},
        external_id=None,
        actor=MIA,
    )
    assert not result.duplicate
    assert result.counted_in_score
    assert not result.qualified_now
    assert result.lead.status == LeadStatus.NURTURING
    stored = u.unit.behaviours.items[result.behaviour_id]
    assert stored.meta == {"page": "/pricing"}
    assert stored.recorded_by == MIA
    assert stored.occurred_at == T0.replace(microsecond=123000)
    assert (await u.unit.leads.get(lead.id)) == result.lead, "the lead was saved"
    [event] = u.unit.emitted(BehaviourRecordedV1)
    assert (event.lead_id, event.behaviour) == (lead.id, Behaviour.PAGE_VIEW)
    assert u.unit.emitted(LeadQualifiedV1) == []


async def test_crossing_the_threshold_hands_the_lead_to_sales_once() -> None:
    u = uow()
    lead = await captured(u)
    for behaviour in (Behaviour.TRIAL_SIGNUP, Behaviour.FORM_SUBMIT, Behaviour.PAGE_VIEW):
        result = await handlers.record_behaviour(
            u, lead.id, behaviour, occurred_at=None, meta=None, external_id=None, actor=MIA
        )
    assert result.lead.status == LeadStatus.QUALIFIED
    [handoff] = u.unit.emitted(LeadQualifiedV1)
    assert handoff.lead_id == lead.id
    assert handoff.behaviour_summary == {Behaviour.TRIAL_SIGNUP: 1, Behaviour.FORM_SUBMIT: 1}


async def test_an_external_id_recorded_before_counts_once() -> None:
    u = uow()
    lead = await captured(u)
    first = await handlers.record_behaviour(
        u, lead.id, Behaviour.PAGE_VIEW, occurred_at=None, meta=None, external_id="ext-1", actor=MIA
    )
    again = await handlers.record_behaviour(
        u, lead.id, Behaviour.PAGE_VIEW, occurred_at=None, meta=None, external_id="ext-1", actor=MIA
    )
    assert again.duplicate
    assert again.behaviour_id == first.behaviour_id
    assert len(u.unit.behaviours.items) == 1
    assert len(u.unit.emitted(BehaviourRecordedV1)) == 1


async def test_behaviour_of_an_unknown_lead_is_not_found_and_changes_nothing() -> None:
    u = uow()
    with pytest.raises(NotFound):
        await handlers.record_behaviour(
            u, "nobody", Behaviour.PAGE_VIEW, occurred_at=None, meta=None, external_id=None, actor=MIA
        )
    assert u.unit.events == []


async def test_changed_rules_are_stored_as_the_next_version_with_their_author() -> None:
    u = uow()
    rules = {b: BehaviourRule(5.0, 10) for b in Behaviour}
    new = await handlers.change_rules(u, rules, 40.0, actor=MIA, note="tighter", expected_version=1)
    assert new.version == 2
    assert new.changed_by.user_id == "user-mia"
    assert (await u.unit.rules.current()) == new
    with pytest.raises(Conflict):
        await handlers.change_rules(u, rules, 40.0, actor=MIA, expected_version=1)
    with pytest.raises(RuleViolation):
        await handlers.change_rules(u, rules, -1.0, actor=MIA)
    assert (await u.unit.rules.current()).version == 2


async def test_rules_changed_at_the_same_moment_elsewhere_answer_conflict() -> None:
    u = uow()

    async def taken(_: object) -> None:
        raise DuplicateKeyError("version 2 exists")

    u.unit.rules.add = taken  # type: ignore[method-assign,assignment]
    with pytest.raises(Conflict, match="same moment"):
        await handlers.change_rules(u, {b: BehaviourRule(5.0, 10) for b in Behaviour}, 40.0, actor=MIA)


def verdict(lead_id: str, value: Verdict, reason: RejectReason | None = None):
    event = LeadVerdictV1(lead_id=lead_id, verdict=value, reason_code=reason, decided_by="user-sam")
    envelope = envelope_for(
        event, source="sales", correlation_id=lead_id, occurred_at=T0 + timedelta(hours=1)
    )
    return event, envelope


async def qualified(u: FakeUnitOfWork[FakeLeadsUnit]) -> Lead:
    lead = await captured(u)
    for behaviour in (Behaviour.TRIAL_SIGNUP, Behaviour.FORM_SUBMIT):
        await handlers.record_behaviour(
            u, lead.id, behaviour, occurred_at=None, meta=None, external_id=None, actor=MIA
        )
    return lead


async def test_a_verdict_on_a_qualified_lead_is_applied_and_announced() -> None:
    u = uow()
    lead = await qualified(u)
    event, envelope = verdict(lead.id, Verdict.REJECTED, RejectReason.NO_BUDGET)
    await handlers.on_lead_verdict(u, event, envelope)
    stored = await u.unit.leads.get(lead.id)
    assert stored is not None
    assert stored.status == LeadStatus.REJECTED
    assert stored.verdict_reason_code == RejectReason.NO_BUDGET.value
    [changed] = u.unit.emitted(LeadStatusChangedV1)
    assert (changed.lead_id, changed.status) == (lead.id, "rejected")
    record = u.unit.verdicts.items[str(envelope.event_id)]
    assert record.applied
    assert record.status_before == LeadStatus.QUALIFIED


async def test_a_verdict_on_a_lead_not_in_qualified_is_recorded_as_ignored() -> None:
    u = uow()
    lead = await captured(u)
    event, envelope = verdict(lead.id, Verdict.ACCEPTED)
    await handlers.on_lead_verdict(u, event, envelope)
    record = u.unit.verdicts.items[str(envelope.event_id)]
    assert not record.applied
    assert record.ignored_because == "lead is 'new', not 'qualified'"
    assert u.unit.emitted(LeadStatusChangedV1) == []
    assert (await u.unit.leads.get(lead.id)) == lead


async def test_a_verdict_on_an_unknown_lead_is_dead_lettered() -> None:
    u = uow()
    event, envelope = verdict("nobody", Verdict.ACCEPTED)
    with pytest.raises(DeadLetter) as dead:
        await handlers.on_lead_verdict(u, event, envelope)
    assert dead.value.reason == "unknown_lead"
    assert u.unit.verdicts.items == {}


# -- edit (issue 9) ------------------------------------------------------------------------------


async def test_an_edit_changes_only_the_given_fields_and_names_them_without_values() -> None:
    u = uow()
    lead = await captured(u)
    u.clock.advance(minutes=5)  # type: ignore[attr-defined]
    change = LeadEdit(name=lead.name, company="Analytical Engines", marketing_email=False)
    edited = await handlers.edit_lead(u, lead.id, change, actor=MIA)
    assert (edited.name, edited.company, edited.email) == (lead.name, "Analytical Engines", lead.email)
    assert edited.consent.marketing_email is False
    assert edited.consent.captured_at == edited.updated_at > lead.updated_at
    assert await u.unit.leads.get(lead.id) == edited
    emitted = u.unit.events[-1]
    event = emitted.event
    assert isinstance(event, LeadEditedV1), "marketing's human step goes out as lead.edited"
    assert emitted.correlation_id == lead.id, "the lead's journey"
    assert event.changed_fields == [EditedField.COMPANY, EditedField.CONSENT], "the name given was unchanged"
    assert (event.lead_id, event.edited_by, event.edited_by_roles) == (lead.id, "user-mia", ["marketing"])
    assert event.edited_at == edited.updated_at
    payload = str(event.to_payload())
    assert "Analytical" not in payload, "no value of the lead in the log"
    assert lead.email not in payload


async def test_an_edit_that_changes_no_value_stores_and_emits_nothing() -> None:
    u = uow()
    lead = await captured(u)
    u.clock.advance(minutes=5)  # type: ignore[attr-defined]
    same = await handlers.edit_lead(u, lead.id, LeadEdit(name=lead.name, marketing_email=True), actor=MIA)
    assert same == lead == await u.unit.leads.get(lead.id)
    assert not any(isinstance(e.event, LeadEditedV1) for e in u.unit.events)


async def test_an_edit_clears_with_blank_and_refuses_nothing_or_a_blank_name() -> None:
    u = uow()
    lead = await captured(u)
    cleared = await handlers.edit_lead(u, lead.id, LeadEdit(company="  "), actor=MIA)
    assert cleared.company is None
    assert cleared.consent == lead.consent, "consent unchanged keeps its date"
    for change in (LeadEdit(), LeadEdit(name=" ")):
        with pytest.raises(RuleViolation):
            await handlers.edit_lead(u, lead.id, change, actor=MIA)
    with pytest.raises(NotFound):
        await handlers.edit_lead(u, "nobody", LeadEdit(name="Ada"), actor=MIA)
    assert await u.unit.leads.get(lead.id) == cleared


# -- which rep a lead is assigned to (issue 9, field-level rules) ------------------------------


def assigned(lead_id: str, rep: str, at: datetime):
    from crm_contracts.events.sales import LeadAssignedV1

    event = LeadAssignedV1(lead_id=lead_id, owner=rep, response_due_at=at + timedelta(hours=4))
    return event, envelope_for(event, source="sales", correlation_id="c", occurred_at=at)


async def test_an_assignment_is_kept_and_only_a_later_one_replaces_it() -> None:
    u = uow()
    lead = await captured(u)
    await handlers.on_lead_assigned(u, *assigned(lead.id, "rhea", T0))
    stored = await u.unit.leads.get(lead.id)
    assert stored is not None
    assert (stored.assigned_rep, stored.assigned_at, stored.updated_at) == (
        "rhea",
        to_millis(T0),
        lead.updated_at,
    )
    await handlers.on_lead_assigned(u, *assigned(lead.id, "rory", T0 + timedelta(minutes=1)))
    await handlers.on_lead_assigned(u, *assigned(lead.id, "rhea", T0))  # stale: arrives late
    await handlers.on_lead_assigned(u, *assigned(lead.id, "otto", T0 + timedelta(minutes=1)))  # same time
    stored = await u.unit.leads.get(lead.id)
    assert stored is not None
    assert stored.assigned_rep == "rory"


async def test_an_assignment_of_an_unknown_lead_is_dead_lettered() -> None:
    with pytest.raises(DeadLetter) as dead:
        await handlers.on_lead_assigned(uow(), *assigned("nobody", "rhea", T0))
    assert dead.value.reason == "unknown_lead"


def test_a_rep_reads_only_the_leads_assigned_to_them_and_other_roles_every_lead() -> None:
    from dataclasses import replace

    from leads.domain.access import can_read, rep_scope

    lead = replace(Lead.new("l1", capture(), T0), assigned_rep="rhea", assigned_at=T0)
    unassigned = Lead.new("l2", capture("bob@example.com"), T0)
    rhea, rory = Actor.of("rhea", ["sales_rep"]), Actor.of("rory", ["sales_rep"])
    assert (rep_scope(rhea), can_read(lead, rhea), can_read(unassigned, rhea)) == ("rhea", True, False)
    assert not can_read(lead, rory)
    for roles in (["sales_manager"], ["marketing"], ["marketing_manager"], ["admin"], ["analyst"],
                  ["sales_rep", "sales_manager"], ["sales_rep", "marketing"]):  # fmt: skip
        who = Actor.of("x", roles)
        assert rep_scope(who) is None, roles
        assert can_read(unassigned, who), roles
    assert rep_scope(Actor.of("rhea", ["sales_rep", "analyst"])) == "rhea"  # an analyst rep is still a rep


async def test_an_edit_of_custom_fields_names_their_keys_never_their_values() -> None:
    from crm_platform.custom_fields import FieldSet, FieldSetIn, RecordType

    defs = FieldSetIn.model_validate(
        {"fields": [{"key": "seats", "label": "Seats", "type": "number", "integer": True, "minimum": 1}]}
    )
    fields = FieldSet(RecordType.LEAD, 1, tuple(defs.fields))
    u = uow()
    lead = await captured(u)
    await handlers.edit_lead(u, lead.id, LeadEdit(custom={"seats": 42}), fields, actor=MIA)
    event = u.unit.events[-1].event
    assert isinstance(event, LeadEditedV1)
    assert (event.changed_fields, event.changed_custom_fields) == ([], ["seats"])
    assert "42" not in str(event.to_payload())


def test_a_stored_leads_person_hashes_are_its_emails_without_walking_the_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``lead_to_doc`` stores what ``with_person_hashes(doc, LEAD_PEOPLE)`` would (erasure finds
    the lead by them), hashing the lead's one e-mail directly instead of walking the document for
    the target's paths (2 us of every bulk or imported lead; docs/performance.md, "Fourteenth
    session, bulk")."""
    from crm_platform import erasure
    from leads.store import LEAD_PEOPLE, lead_to_doc

    lead = Lead.new(
        "lead-1",
        Capture(email="Ada@Example.com ", name="Ada", source_channel="web", marketing_email=True),
        T0,
    )
    expected = erasure.with_person_hashes(lead_to_doc(lead), LEAD_PEOPLE)[erasure.PERSON_HASHES]

    def walked(*args: object) -> list[str]:
        raise AssertionError("the document was walked for its e-mails")

    monkeypatch.setattr(erasure, "emails_in", walked)
    assert lead_to_doc(lead)[erasure.PERSON_HASHES] == expected == erasure.person_hashes("ada@example.com")
    assert LEAD_PEOPLE.emails == ("email",), "lead_to_doc hashes the one e-mail LEAD_PEOPLE names"
