"""Every sales handler against the in-memory fakes: no broker, no database, a manual clock.

These pin the use cases (what is stored, what is emitted, what is refused) in
milliseconds; the integration suites beside them run the same paths on the real
broker and mongod.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.common import Consent, Contact
from crm_contracts.events.leads import LeadQualifiedV1
from crm_contracts.events.sales import (
    ActivityLoggedV1,
    CommitmentFlagUpdatedBySalesV1,
    DealWonV2,
    LeadAssignedV1,
    LeadVerdictV1,
    OpportunityCreatedV1,
    OpportunityLostV1,
    OpportunityStageChangedV1,
    RejectReason,
    Verdict,
)
from crm_contracts.events.service_desk import CommitmentFlaggedV1, SignalKind, UpsellSpottedV1
from crm_platform.actor import Actor
from crm_platform.clock import ManualClock
from crm_platform.consumer import DeadLetter
from crm_platform.errors import Conflict, Forbidden, NotFound, RuleViolation
from crm_platform.uow import FakeUnitOfWork
from sales import handlers
from sales.domain.assignment import Rep
from sales.domain.inbox import InboxStatus
from sales.domain.opportunity import ActivityType, OpportunityStatus
from sales.domain.pipeline import DEFAULT_PIPELINE, Stage
from sales.fakes import FakeSalesUnit

T0 = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
MS = datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC)  # T0 at MongoDB's precision
RITA = Actor.of("rita", ["sales_rep"])
SAM = Actor.of("sam", ["sales_rep"])
MONA = Actor.of("mona", ["sales_manager"])
Uow = FakeUnitOfWork[FakeSalesUnit]


def make_uow(*active: str, inactive: tuple[str, ...] = ()) -> Uow:
    reps = [Rep(r, True) for r in active] + [Rep(r, False) for r in inactive]
    ids = (f"id-{n}" for n in itertools.count(1))
    return FakeUnitOfWork(FakeSalesUnit(reps), clock=ManualClock(T0), new_id=lambda: next(ids))


def qualified(lead_id: str, company: str = "Engines Ltd") -> LeadQualifiedV1:
    return LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ada Lovelace", email=f"{lead_id}@example.com"),
        company=company,
        score=72.5,
        threshold=50.0,
        score_reasons=[],
        source_channel="webinar",
        campaign="q1",
        behaviour_summary={},
        consent=Consent(marketing_email=True),
        qualified_at=T0,
    )


def envelope(event: Any, occurred_at: datetime = T0, source: str = "leads") -> Envelope:
    return envelope_for(
        event, source=source, correlation_id=f"journey-{event.partition_key()}", occurred_at=occurred_at
    )


async def handoff(
    uow: Uow, lead_id: str, occurred_at: datetime = T0, company: str = "Engines Ltd"
) -> Envelope:
    event = qualified(lead_id, company)
    env = envelope(event, occurred_at)
    await handlers.on_lead_qualified(uow, event, env)
    return env


def emitted(uow: Uow) -> list[str]:
    return [e.event.event_type for e in uow.unit.events]


def test_an_inbox_items_person_hashes_are_its_contacts_without_walking_the_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``item_doc`` stores what ``with_person_hashes(doc, INBOX_PEOPLE)`` would (erasure finds the
    item by them), hashing the handoff's one contact e-mail directly instead of walking the
    document for the target's paths (1.5 us of every drained handoff; docs/performance.md,
    twenty-second session, drainsales)."""
    from crm_platform import erasure
    from sales.domain.inbox import InboxItem
    from sales.store import INBOX_PEOPLE, item_doc

    event = qualified("lead-1")
    item = InboxItem.receive(event, envelope(event), now=MS, sla_minutes=60, handoff_number=1)
    doc = item_doc(item)
    unhashed = {k: v for k, v in doc.items() if k != erasure.PERSON_HASHES}
    walked = erasure.with_person_hashes(unhashed, INBOX_PEOPLE)
    assert doc == walked
    assert list(doc) == list(walked)
    assert doc[erasure.PERSON_HASHES] == erasure.person_hashes("lead-1@example.com")

    def never(*args: object) -> list[str]:
        raise AssertionError("the document was walked for its e-mails")

    monkeypatch.setattr(erasure, "emails_in", never)
    assert item_doc(item) == doc
    assert INBOX_PEOPLE.emails == ("handoff.contact.email",), "item_doc hashes the one e-mail it names"


async def test_an_item_of_a_sealed_handoff_names_its_contact_by_the_held_key_it_was_opened_with() -> None:
    """A sealed handoff's item stores the id of the held key its contact was opened with in
    ``person_hashes``, not the contact's hash (a time-ordered index entry, not a random one:
    erasure finds it through the key, crm_platform.erasure ``by_held_key``); read back, it keeps
    it. A plaintext refresh names the new contact by its hash, an erased contact by nothing."""
    from crm_platform import erasure
    from crm_platform.shredding import sealed_event
    from sales.store import INBOX_PEOPLE, item_doc, item_from_doc

    assert INBOX_PEOPLE.by_held_key
    uow = make_uow("sam")
    plain = qualified("l-1")
    sealed, [key] = sealed_event(plain, "leads")
    await handlers.on_lead_qualified(uow, plain, envelope(sealed))  # the consumer opened it
    item = await uow.unit.inbox.latest_for_lead("l-1")
    assert item is not None
    held = f"held:leads:{key.person_id}"
    assert item.person_key == held
    doc = item_doc(item)
    assert doc[erasure.PERSON_HASHES] == [held]
    assert item_from_doc(doc).person_key == held
    assert item_doc(item_from_doc(doc)) == doc

    later = qualified("l-1")
    await handlers.on_lead_qualified(uow, later, envelope(later, T0 + timedelta(minutes=5)))
    refreshed = await uow.unit.inbox.latest_for_lead("l-1")
    assert refreshed is not None
    assert refreshed.person_key is None
    assert item_doc(refreshed)[erasure.PERSON_HASHES] == erasure.person_hashes("l-1@example.com")

    refreshed.person_key = held
    refreshed.handoff = refreshed.handoff.model_copy(
        update={"contact": refreshed.handoff.contact.model_copy(update={"email": "erased-0@erased.example"})}
    )
    assert item_doc(refreshed)[erasure.PERSON_HASHES] == [], "an erased contact is nobody"


# -- lead.qualified ---------------------------------------------------------------------------


async def test_a_qualified_lead_lands_in_the_inbox_assigned_round_robin_with_its_due_date() -> None:
    uow = make_uow("sam", "rita")
    env = await handoff(uow, "l-1")
    await handoff(uow, "l-2")
    first = await uow.unit.inbox.latest_for_lead("l-1")
    assert first is not None
    assert first.id == str(env.event_id)
    assert (first.owner, first.assigned_by, first.status) == ("rita", "round_robin", InboxStatus.PENDING)
    assert first.received_at == MS
    assert first.response_due_at == MS + timedelta(minutes=60)
    assert first.assignment_history[0].counter == 0
    second = await uow.unit.inbox.latest_for_lead("l-2")
    assert second is not None
    assert second.owner == "sam"
    assigned = uow.unit.emitted(LeadAssignedV1)
    assert [(e.lead_id, e.owner) for e in assigned] == [("l-1", "rita"), ("l-2", "sam")]


async def test_with_nobody_active_the_lead_waits_unassigned_and_nothing_is_emitted() -> None:
    uow = make_uow(inactive=("rita",))
    await handoff(uow, "l-1")
    item = await uow.unit.inbox.latest_for_lead("l-1")
    assert item is not None
    assert item.owner is None
    assert item.assignment_history == []
    assert uow.unit.events == []


async def test_a_second_handoff_while_pending_refreshes_the_item_and_assigns_it_if_unassigned() -> None:
    uow = make_uow(inactive=("rita",))
    first = await handoff(uow, "l-1")
    uow.unit.team.reps["rita"] = Rep("rita", True)
    second = await handoff(uow, "l-1", T0 + timedelta(minutes=5), company="Engines Plc")
    item = await uow.unit.inbox.latest_for_lead("l-1")
    assert item is not None
    assert len(uow.unit.inbox.items) == 1
    assert item.id == str(first.event_id)
    assert item.handoff_event_ids == [str(first.event_id), str(second.event_id)]
    assert (item.company, item.owner) == ("Engines Plc", "rita")
    assert [e.owner for e in uow.unit.emitted(LeadAssignedV1)] == ["rita"]


async def test_an_older_resent_handoff_after_a_newer_one_changes_nothing_but_is_remembered() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1", T0 + timedelta(minutes=5), company="Newer")
    old = await handoff(uow, "l-1", T0, company="Older")
    item = await uow.unit.inbox.latest_for_lead("l-1")
    assert item is not None
    assert item.company == "Newer"
    assert item.superseded_event_ids == [str(old.event_id)]
    assert len(uow.unit.emitted(LeadAssignedV1)) == 1


async def test_a_handoffs_round_robin_turn_is_started_before_the_leads_items_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The turn (its own round trip, outside the transaction) goes out beside the inbox read,
    not after it: one round trip fewer before a lone handoff is stored (issue 12's p99). The
    rotation is the same: rita, sam, rita."""
    uow = make_uow("sam", "rita")
    order: list[str] = []
    team, inbox = uow.unit.team, uow.unit.inbox
    turn_ahead, latest = team.turn_ahead, inbox.latest_for_lead

    def recorded_turn() -> Any:
        order.append("turn")
        return turn_ahead()

    async def recorded_read(lead_id: str) -> Any:
        order.append("inbox read")
        return await latest(lead_id)

    monkeypatch.setattr(team, "turn_ahead", recorded_turn)
    monkeypatch.setattr(inbox, "latest_for_lead", recorded_read)
    for lead in ("l-1", "l-2", "l-3"):
        await handoff(uow, lead)
    assert order == ["turn", "inbox read"] * 3
    assert [e.owner for e in uow.unit.emitted(LeadAssignedV1)] == ["rita", "sam", "rita"]
    assert team.turns.value == 3


# -- upsell.spotted and commitment.flagged ----------------------------------------------------


def upsell(signal_id: str, owner: str, value: float | None = 1200.5) -> UpsellSpottedV1:
    return UpsellSpottedV1(
        signal_id=signal_id,
        account_id="acc-1",
        deal_id="deal-1",
        account_name="Engines Ltd",
        sales_owner=owner,
        kind=next(iter(SignalKind)),
        description="more seats",
        estimated_value=value,
        spotted_by="csm-1",
    )


async def test_an_upsell_opens_an_opportunity_for_the_active_account_owner_once() -> None:
    uow = make_uow("rita", "sam")
    event = upsell("sig-1", "sam")
    await handlers.on_upsell_spotted(uow, event, envelope(event, source="service-desk"))
    await handlers.on_upsell_spotted(uow, event, envelope(event, source="service-desk"))
    [opp] = uow.unit.opportunities.opportunities.values()
    assert (opp.owner, opp.assigned_by, opp.stage) == ("sam", "account_owner", DEFAULT_PIPELINE.first.name)
    assert (opp.amount, opp.currency, opp.signal_id) == (Decimal("1200.5"), "EUR", "sig-1")
    assert opp.stage_history[0].by == "service-desk:csm-1"
    assert [e.amount for e in uow.unit.emitted(OpportunityCreatedV1)] == [1200.5]


async def test_an_upsell_for_an_inactive_owner_goes_round_robin() -> None:
    uow = make_uow("rita", inactive=("sam",))
    event = upsell("sig-2", "sam", value=None)
    await handlers.on_upsell_spotted(uow, event, envelope(event, source="service-desk"))
    [opp] = uow.unit.opportunities.opportunities.values()
    assert (opp.owner, opp.assigned_by, opp.assignment_counter, opp.amount) == (
        "rita",
        "round_robin",
        0,
        None,
    )


async def won_deal(uow: Uow, owner: Actor = RITA) -> str:
    await handoff(uow, "l-won")
    result = await handlers.decide(uow, "l-won", Verdict.ACCEPTED, owner)
    assert result.opportunity is not None
    opp_id = result.opportunity.id
    for stage in ("discovery", "proposal", "negotiation"):
        await handlers.move_stage(uow, opp_id, stage, WON_FIELDS, [], owner)
    await handlers.move_stage(uow, opp_id, "won", WON_FIELDS, [], owner)
    return opp_id


WON_FIELDS: dict[str, object] = {
    "budget": Decimal("5000"),
    "decision_maker": "Ada",
    "close_date": "2026-06-30",
    "amount": Decimal("4800.00"),
    "currency": "USD",
    "products": [{"sku": "A", "name": "Seat", "quantity": 4, "unit_price": Decimal("1200.00")}],
    "commitments": [{"description": "SSO by June", "due_date": None}],
}


async def flagged_deal() -> tuple[Uow, str, CommitmentFlaggedV1]:
    """A won deal of Rita's whose one commitment customer success flagged (flag ``f-1``)."""
    uow = make_uow("rita")
    opp_id = await won_deal(uow)
    deal = await uow.unit.opportunities.get(opp_id)
    assert deal is not None
    [commitment_id] = deal.commitment_ids
    flag = CommitmentFlaggedV1(
        flag_id="f-1",
        account_id="acc-1",
        deal_id=opp_id,
        commitment_id=commitment_id,
        reason="no SSO",
        flagged_by="c",
    )
    await handlers.on_commitment_flagged(uow, flag, envelope(flag, source="service-desk"))
    return uow, opp_id, flag


async def test_a_commitment_flag_is_recorded_once_on_the_won_deal_and_unknown_deals_are_dead_letters() -> (
    None
):
    uow, opp_id, flag = await flagged_deal()
    await handlers.on_commitment_flagged(uow, flag, envelope(flag, source="service-desk"))
    deal = await uow.unit.opportunities.get(opp_id)
    assert deal is not None
    assert [(f.flag_id, f.commitment_known) for f in deal.commitment_flags] == [("f-1", True)]
    stranger = flag.model_copy(update={"deal_id": "nope"})
    with pytest.raises(DeadLetter) as err:
        await handlers.on_commitment_flagged(uow, stranger, envelope(stranger, source="service-desk"))
    assert err.value.reason == "unknown_deal"


async def test_after_the_win_sales_acknowledges_then_resolves_a_flag_and_each_answer_goes_to_the_desk() -> (
    None
):
    uow, opp_id, _flag = await flagged_deal()
    with pytest.raises(Forbidden):
        await handlers.acknowledge_flag(uow, opp_id, "f-1", SAM)  # not Sam's deal
    with pytest.raises(NotFound):
        await handlers.acknowledge_flag(uow, opp_id, "f-unknown", RITA)
    deal = await handlers.acknowledge_flag(uow, opp_id, "f-1", RITA)
    assert deal.commitment_flags[0].status == "acknowledged"
    with pytest.raises(Conflict):
        await handlers.acknowledge_flag(uow, opp_id, "f-1", RITA)
    with pytest.raises(RuleViolation) as blank:
        await handlers.resolve_flag(uow, opp_id, "f-1", "   ", RITA)
    assert blank.value.details["field"] == "resolution"
    deal = await handlers.resolve_flag(
        uow, opp_id, "f-1", "SSO moved to the Q3 release, customer agreed", MONA
    )
    resolved = deal.commitment_flags[0]
    assert (resolved.status, resolved.acknowledged_by, resolved.resolved_by) == (
        "resolved",
        RITA.user_id,
        MONA.user_id,
    )
    with pytest.raises(Conflict):
        await handlers.resolve_flag(uow, opp_id, "f-1", "again", RITA)
    answers = uow.unit.emitted(CommitmentFlagUpdatedBySalesV1)
    assert [(a.status.value, a.acted_by, a.account_id) for a in answers] == [
        ("acknowledged", RITA.user_id, "acc-1"),
        ("resolved", MONA.user_id, "acc-1"),
    ]
    assert answers[1].resolution == "SSO moved to the Q3 release, customer agreed"


# -- team, config, pipeline -------------------------------------------------------------------


async def test_the_roster_the_sla_and_the_pipeline_are_replaced_by_managers() -> None:
    uow = make_uow("rita")
    await handlers.replace_roster(uow, [("sam", "Sam", True), ("otto", None, False)], MONA)
    assert await uow.unit.team.active_rep_ids() == ["sam"]
    rep = await handlers.set_rep(uow, "sam", None, False, MONA)
    assert (rep.name, rep.active, rep.updated_by) == ("Sam", False, "mona")  # no name given keeps it
    await handlers.set_sla(uow, 30, MONA)
    assert await uow.unit.team.sla_minutes() == 30
    with pytest.raises(RuleViolation):
        await handlers.set_sla(uow, 0, MONA)
    stages = [
        Stage("intro", 0.3),
        Stage("won", 1.0, ("amount", "products", "commitments")),
        Stage("lost", 0.0, ("lost_reason",)),
    ]
    await handlers.replace_pipeline(uow, stages, MONA)
    pipeline = await uow.unit.team.pipeline()
    assert (pipeline.version, pipeline.first.name) == (2, "intro")


async def test_a_stage_that_still_holds_opportunities_cannot_be_removed() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)
    stages = [
        Stage("intro", 0.3),
        Stage("won", 1.0, ("amount", "products", "commitments")),
        Stage("lost", 0.0, ("lost_reason",)),
    ]
    with pytest.raises(Conflict) as err:
        await handlers.replace_pipeline(uow, stages, MONA)
    assert err.value.details["stages"] == {"qualification": 1}
    assert (await uow.unit.team.pipeline()).version == 1


# -- inbox: assignment and verdicts -----------------------------------------------------------


async def test_a_manager_assigns_a_pending_item_to_an_active_rep_or_the_next_in_rotation() -> None:
    uow = make_uow("rita", "sam", inactive=("otto",))
    await handoff(uow, "l-1")  # turn 0: rita
    with pytest.raises(RuleViolation):
        await handlers.assign(uow, "l-1", "otto", MONA)
    item = await handlers.assign(uow, "l-1", "sam", MONA)
    assert (item.owner, item.assigned_by, item.assignment_history[-1].by) == ("sam", "manager", "mona")
    again = await handlers.assign(uow, "l-1", "sam", MONA)  # already theirs: nothing changes
    assert len(again.assignment_history) == 2
    rotated = await handlers.assign(uow, "l-1", None, MONA)  # turn 1: sam again, so unchanged
    assert rotated.owner == "sam"
    rotated = await handlers.assign(uow, "l-1", None, MONA)  # turn 2: rita
    assert (rotated.owner, rotated.assignment_history[-1].counter) == ("rita", 2)
    assert [e.owner for e in uow.unit.emitted(LeadAssignedV1)] == ["rita", "sam", "rita"]
    with pytest.raises(NotFound):
        await handlers.assign(uow, "nope", None, MONA)


async def test_accepting_opens_an_opportunity_and_tells_marketing() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    result = await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA, note="call Monday")
    opp = result.opportunity
    assert opp is not None
    assert (opp.owner, opp.assigned_by, opp.stage, opp.lead_id) == (
        "rita",
        "round_robin",
        "qualification",
        "l-1",
    )
    assert opp.lead_source is not None
    assert opp.lead_source.campaign == "q1"
    assert opp.contacts[0]["email"] == "l-1@example.com"
    assert result.item.status == InboxStatus.ACCEPTED
    assert result.item.verdict is not None
    assert result.item.verdict.opportunity_id == opp.id
    assert emitted(uow)[-2:] == ["opportunity.created", "lead.verdict"]
    assert all(e.correlation_id == "journey-l-1" for e in uow.unit.events[-2:])
    [verdict] = uow.unit.emitted(LeadVerdictV1)
    assert (verdict.verdict, verdict.decided_by, verdict.opportunity_id) == (Verdict.ACCEPTED, "rita", opp.id)


async def test_a_verdict_is_the_owners_once_and_a_rejection_needs_its_reason() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    with pytest.raises(RuleViolation):
        await handlers.decide(uow, "l-1", Verdict.REJECTED, RITA)
    with pytest.raises(Forbidden):
        await handlers.decide(uow, "l-1", Verdict.ACCEPTED, SAM)
    assert uow.unit.opportunities.opportunities == {}  # the refused attempts left nothing behind
    result = await handlers.decide(uow, "l-1", Verdict.REJECTED, MONA, reason_code=RejectReason.DUPLICATE)
    assert (result.item.status, result.opportunity) == (InboxStatus.REJECTED, None)
    with pytest.raises(Conflict):
        await handlers.decide(uow, "l-1", Verdict.RECYCLED, RITA)
    assert [e.verdict for e in uow.unit.emitted(LeadVerdictV1)] == [Verdict.REJECTED]


# -- opportunities ----------------------------------------------------------------------------


async def test_a_move_needs_the_target_stages_fields_and_a_win_hands_the_deal_over() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    opp = (await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)).opportunity
    assert opp is not None
    with pytest.raises(RuleViolation) as err:
        await handlers.move_stage(uow, opp.id, "discovery", {}, [], RITA)
    assert err.value.details["missing"] == ["budget", "decision_maker"]
    with pytest.raises(Forbidden):
        await handlers.move_stage(uow, opp.id, "discovery", WON_FIELDS, [], SAM)
    moved = await handlers.move_stage(
        uow, opp.id, "won", WON_FIELDS, [{"name": "Bo", "email": "bo@x.io"}], RITA
    )
    assert (moved.status, moved.won_at, moved.amount, moved.currency) == (
        OpportunityStatus.WON,
        MS,
        Decimal("4800.00"),
        "USD",
    )
    assert [h.to_stage for h in moved.stage_history] == ["qualification", "won"]
    [deal] = uow.unit.emitted(DealWonV2)
    assert (deal.value.amount, deal.value.currency, len(deal.contacts)) == (4800.0, "USD", 2)
    assert deal.commitments[0].commitment_id  # each promise got its id before the handoff
    [changed] = uow.unit.emitted(OpportunityStageChangedV1)
    assert (changed.from_stage, changed.to_stage, changed.amount) == ("qualification", "won", 4800.0)
    with pytest.raises(Conflict):
        await handlers.move_stage(uow, opp.id, "lost", {"lost_reason": "x"}, [], RITA)


async def test_a_lost_opportunity_says_why_and_a_deal_that_is_not_a_valid_handoff_is_refused() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    opp = (await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)).opportunity
    assert opp is not None
    bad = {**WON_FIELDS, "products": [{"sku": "A"}]}
    with pytest.raises(RuleViolation, match=r"deal\.won"):
        await handlers.move_stage(uow, opp.id, "won", bad, [], RITA)
    lost = await handlers.move_stage(uow, opp.id, "lost", {"lost_reason": "budget cut"}, [], RITA)
    assert (lost.status, lost.lost_reason, lost.lost_at) == (OpportunityStatus.LOST, "budget cut", MS)
    assert [e.reason for e in uow.unit.emitted(OpportunityLostV1)] == ["budget cut"]


async def test_fields_change_on_an_open_opportunity_only_and_money_is_normalised() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    opp = (await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)).opportunity
    assert opp is not None
    updated = await handlers.update_fields(uow, opp.id, {"amount": Decimal("10.50"), "seats": 3}, [], RITA)
    assert (updated.amount, updated.currency, updated.fields["seats"]) == (Decimal("10.50"), "EUR", 3)
    updated = await handlers.update_fields(uow, opp.id, {"currency": "GBP"}, [], RITA)
    assert (updated.amount, updated.currency) == (Decimal("10.50"), "GBP")
    await handlers.move_stage(uow, opp.id, "lost", {"lost_reason": "gone"}, [], RITA)
    with pytest.raises(Conflict):
        await handlers.update_fields(uow, opp.id, {"amount": Decimal(1)}, [], RITA)


async def test_an_activity_is_logged_against_the_opportunity_and_checked_first() -> None:
    uow = make_uow("rita")
    await handoff(uow, "l-1")
    opp = (await handlers.decide(uow, "l-1", Verdict.ACCEPTED, RITA)).opportunity
    assert opp is not None
    with pytest.raises(RuleViolation):
        await handlers.log_activity(uow, "unknown", ActivityType.CALL, "x", RITA, amount=Decimal(1))
    with pytest.raises(RuleViolation):
        await handlers.log_activity(
            uow, opp.id, ActivityType.CALL, "x", RITA, occurred_at=T0 + timedelta(hours=1)
        )
    earlier = T0 - timedelta(days=1)
    quote = await handlers.log_activity(uow, opp.id, ActivityType.QUOTE, "q", RITA, amount=Decimal("99.90"))
    await handlers.log_activity(uow, opp.id, ActivityType.CALL, "c", RITA, occurred_at=earlier)
    assert (quote.amount, quote.currency, quote.logged_at, quote.logged_by) == (
        Decimal("99.90"),
        "EUR",
        MS,
        "rita",
    )
    stored = await uow.unit.opportunities.get(opp.id)
    assert stored is not None
    assert (stored.activity_count, stored.last_activity_at) == (2, MS)
    assert len(uow.unit.opportunities.activities) == 2
    assert [e.activity_type for e in uow.unit.emitted(ActivityLoggedV1)] == ["quote", "call"]
    with pytest.raises(NotFound):
        await handlers.log_activity(uow, "unknown", ActivityType.CALL, "x", RITA)
