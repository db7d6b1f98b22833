"""The pure stream logic: funnel, channels, latencies; idempotent and order-insensitive."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from analytics.domain.engine import AnalyticsState, apply, figure_values, merge_state, rebuild_figures
from analytics.domain.facts import DealFacts, LeadFacts, ReceiptFact, stored_json
from analytics.domain.figures import HANDOFF_NAMES
from analytics.domain.histogram import GROWTH
from crm_contracts import decode

REL = GROWTH - 1


class JsonTable(dict):
    """A dict that stores what a faust changelog would give back (JSON round trip of what the
    changelog writer stores: ``stored_json``)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, json.loads(json.dumps(stored_json(value))))


def new_state() -> AnalyticsState:
    return AnalyticsState(leads=JsonTable(), deals=JsonTable(), receipts=JsonTable())


def run(envelopes, state=None) -> AnalyticsState:
    state = state or new_state()
    for env in envelopes:
        apply(state, env, decode(env))
    return state


def stages(state):
    return state.figures.summary()["funnel"]["stages"]


def handoffs(state):
    return state.figures.summary()["handoffs"]


def full_journey(j, lead="lead-1", deal="deal-1", channel="web"):
    return [
        j.captured(lead, channel, when=0),
        j.behaviour(lead, channel, when=10),
        j.qualified(lead, channel, when=60),
        j.verdict(lead, "accepted", when=360),
        j.won(deal, lead, when=3600),
        j.onboarded(deal, when=3602),  # automatic: not what ends deal-won's business latency
        j.first_step(deal, when=7200),  # the CSM's first onboarding step
    ]


def test_a_full_journey_reaches_every_stage(journey):
    state = run(full_journey(journey))
    summary = state.figures.summary()
    assert summary["funnel"]["stages"] == {
        "captured": 1,
        "qualified": 1,
        "accepted": 1,
        "won": 1,
        "onboarded": 1,
    }
    assert summary["funnel"]["conversion"]["captured_to_won"] == 1.0
    assert summary["channels"] == {
        "web": {"captured": 1, "qualified": 1, "accepted": 1, "won": 1, "onboarded": 1},
    }
    lead_qualified = summary["handoffs"]["lead-qualified"]["business"]
    deal_won = summary["handoffs"]["deal-won"]["business"]
    assert lead_qualified is not None
    assert deal_won is not None
    assert lead_qualified["count"] == 1
    assert lead_qualified["p50"] == pytest.approx(300, rel=REL)
    assert deal_won["count"] == 1
    assert deal_won["p99"] == pytest.approx(3600, rel=REL)


def test_conversion_ratios_and_empty_stages(journey):
    state = run(
        [
            journey.captured("a"),
            journey.captured("b"),
            journey.captured("c"),
            journey.captured("d"),
            journey.qualified("a"),
            journey.qualified("b"),
            journey.verdict("a"),
        ]
    )
    conversion = state.figures.summary()["funnel"]["conversion"]
    assert conversion["captured_to_qualified"] == 0.5
    assert conversion["qualified_to_accepted"] == 0.5
    assert conversion["accepted_to_won"] == 0.0
    assert conversion["won_to_onboarded"] is None  # nothing won yet


def test_a_redelivered_event_changes_no_figure(journey):
    events = [*full_journey(journey), journey.receipt("lead-qualified", "evt-1", 0.004)]
    state = run(events)
    before, version = state.figures.summary(), state.figures.version
    run(events, state)  # every event delivered a second time
    run(reversed(events), state)  # and a third, backwards
    assert state.figures.summary() == before
    assert state.figures.version == version  # nothing changed: no snapshot to write


def test_stages_count_distinct_leads_and_deals(journey):
    state = run(
        [
            journey.captured("lead-1", when=0),
            journey.captured("lead-1", merged=True, when=5),  # same email again: not a new lead
            journey.captured("lead-2", merged=True, when=6),  # merged captures never count
            journey.qualified("lead-1", when=60),
            journey.qualified("lead-1", when=900),  # re-qualified after a recycle: still one lead
            journey.verdict("lead-1", "recycled", when=300),
            journey.verdict("lead-1", "rejected", when=400),
            journey.won("deal-1", "lead-1"),
            journey.won("deal-2", "lead-1"),  # two deals from one lead: two won deals
            journey.onboarded("deal-1", "acc-1"),
            journey.onboarded("deal-1", "acc-2"),
        ]
    )
    assert stages(state) == {"captured": 1, "qualified": 1, "accepted": 0, "won": 2, "onboarded": 1}


def test_out_of_order_gives_the_same_figures_in_every_order(journey):
    # Behaviour moves no figure: left out, every order of the rest is 6! runs, not 7!.
    events = [e for e in full_journey(journey) if e.event_type != "lead.behaviour_recorded"]
    assert len(events) == 6
    expected = run(events).figures.summary()
    for order in itertools.permutations(events):
        assert run(order).figures.summary() == expected


def test_business_latency_pairs_when_the_second_event_arrives_first(journey):
    state = run(
        [
            journey.verdict("lead-1", "accepted", when=400),  # before the qualification
            journey.onboarded("deal-1", when=5000),  # before the win
            journey.first_step("deal-1", when=5000),
        ]
    )
    assert handoffs(state)["lead-qualified"]["business"]["count"] == 0
    assert handoffs(state)["deal-won"]["business"]["count"] == 0
    run([journey.qualified("lead-1", when=100), journey.won("deal-1", "lead-1", when=1000)], state)
    assert handoffs(state)["lead-qualified"]["business"]["p50"] == pytest.approx(300, rel=REL)
    assert handoffs(state)["deal-won"]["business"]["p50"] == pytest.approx(4000, rel=REL)


def test_a_requalified_lead_pairs_acceptance_with_the_latest_qualification_before_it(journey):
    state = run(
        [
            journey.qualified("lead-1", when=60),
            journey.verdict("lead-1", "recycled", when=120),
            journey.qualified("lead-1", when=1000),
            journey.verdict("lead-1", "accepted", when=1300),
            journey.qualified("lead-1", when=5000),  # later qualifications do not move it
        ]
    )
    business = handoffs(state)["lead-qualified"]["business"]
    assert business["count"] == 1
    assert business["p50"] == pytest.approx(300, rel=REL)


def test_a_rejected_or_recycled_lead_was_answered_too(journey):
    """Sales' first human answer ends the handoff's business latency, whatever the verdict."""
    state = run(
        [
            journey.qualified("lead-1", when=100),
            journey.verdict("lead-1", "rejected", when=700),
            journey.qualified("lead-2", when=100),
            journey.verdict("lead-2", "recycled", when=250),
        ]
    )
    business = handoffs(state)["lead-qualified"]["business"]
    assert business["count"] == 2
    assert business["p99"] == pytest.approx(600, rel=REL)
    assert state.figures.summary()["funnel"]["stages"]["accepted"] == 0, "answered is not accepted"


def test_lead_facts_stored_before_answered_at_existed_keep_their_sample() -> None:
    from analytics.domain.facts import LeadFacts

    old = LeadFacts.from_json({"qualified_at": [100.0], "accepted_at": 400.0})
    assert old.business_latency() == 300.0
    assert LeadFacts.from_json(old.to_json()) == old


def test_business_latency_is_never_negative(journey):
    state = run([journey.qualified("lead-1", when=500), journey.verdict("lead-1", when=400)])
    assert handoffs(state)["lead-qualified"]["business"]["p50"] == 0.0


def test_channel_comes_from_capture_then_qualification(journey):
    state = run(
        [
            journey.captured("lead-1", "webinar", when=0),
            journey.qualified("lead-1", "web", when=60),  # capture channel wins
            journey.qualified("lead-2", "partner", when=60),  # never captured here: qualification's
        ]
    )
    channels = state.figures.summary()["channels"]
    assert channels["webinar"]["qualified"] == 1
    assert channels["partner"]["qualified"] == 1
    assert "web" not in channels


def test_deals_count_under_their_leads_channel_even_when_they_come_first(journey):
    state = run(
        [
            journey.won("deal-1", "lead-1", when=3600),
            journey.onboarded("deal-1", when=7200),
            journey.won("deal-9", None, when=3600),  # an upsell deal without a lead
        ]
    )
    channels = state.figures.summary()["channels"]
    assert channels["unknown"] == {
        "captured": 0,
        "qualified": 0,
        "accepted": 0,
        "won": 2,
        "onboarded": 1,
    }
    run([journey.captured("lead-1", "events", when=0)], state)
    channels = state.figures.summary()["channels"]
    assert channels["events"] == {
        "captured": 1,
        "qualified": 0,
        "accepted": 0,
        "won": 1,
        "onboarded": 1,
    }
    assert channels["unknown"]["won"] == 1  # deal-9 stays unattributed


def test_transport_latency_from_receipts_keyed_by_handoff_event(journey):
    state = run(
        [
            journey.receipt("lead-qualified", "evt-1", 0.002),
            journey.receipt("lead-qualified", "evt-2", 0.004),
            journey.receipt("lead-qualified", "evt-3", 0.006),
            journey.receipt("deal-won", "evt-4", 0.5),
            # A second receipt for evt-1 (new envelope, new event id): one sample, the first store.
            journey.receipt("lead-qualified", "evt-1", 0.010),
        ]
    )
    h = handoffs(state)
    transport = h["lead-qualified"]["transport"]
    assert transport["count"] == 3
    assert transport["p50"] == pytest.approx(0.004, rel=REL)
    assert transport["p99"] == pytest.approx(0.006, rel=REL)
    assert h["deal-won"]["transport"]["count"] == 1
    assert h["upsell-spotted"] == {
        "transport": {"count": 0, "p50": None, "p95": None, "p99": None},
        "business": None,
    }
    # Every handoff of the contracts' table, the action items' too, and the five of the brief among them.
    assert list(h) == list(HANDOFF_NAMES)
    brief = {"lead-qualified", "lead-verdict", "deal-won", "upsell-spotted", "commitment-flagged"}
    assert brief < set(h)


def test_events_analytics_does_not_count_are_ignored(journey):
    state = run([journey.behaviour("lead-1"), journey.verdict("lead-2", "rejected")])
    assert state.figures.version == 0
    assert stages(state) == dict.fromkeys(stages(state), 0)


def test_rebuild_from_recovered_tables_gives_the_same_figures(journey):
    rng = random.Random(11)
    events = []
    for i in range(40):
        lead, deal = f"lead-{i}", f"deal-{i}"
        channel = rng.choice(["web", "partner", "events"])
        events += full_journey(journey, lead, deal, channel)[: rng.randint(1, 6)]
        events.append(journey.receipt("lead-qualified", f"evt-{i}", rng.uniform(0.001, 0.2)))
    rng.shuffle(events)
    live = run(events + events[:25])  # with some redeliveries
    recovered = AnalyticsState(
        leads=JsonTable(live.leads), deals=JsonTable(live.deals), receipts=JsonTable(live.receipts)
    )
    rebuild_figures(recovered)
    assert recovered.figures.summary() == live.figures.summary()
    # and the same as a clean in-order run
    assert run(sorted(events, key=lambda e: e.occurred_at)).figures.summary() == (live.figures.summary())


def _random_history(journey, seed: int, n: int = 40) -> list:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        lead, deal = f"lead-{i}", f"deal-{i}"
        channel = rng.choice(["web", "partner", "events"])
        events += full_journey(journey, lead, deal, channel)[: rng.randint(1, 6)]
        if rng.random() < 0.3:  # re-qualified after a recycle, some from another channel
            events.append(journey.qualified(lead, rng.choice(["web", "ads"]), when=rng.randint(0, 9000)))
        events.append(journey.receipt("lead-qualified", f"evt-{i}", rng.uniform(0.001, 0.2)))
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_merging_a_replay_of_the_log_restores_what_the_worker_lost(journey, seed):
    """Reconciliation: the worker lost some facts (a broker dropped its changelog writes);
    merging the facts of a replay of the log gives exactly the figures of the full run."""
    events = _random_history(journey, seed)
    rng = random.Random(seed)
    short = run([e for e in events if rng.random() > 0.3])  # the facts that survived
    replay = run(events)
    before = figure_values(short.figures)

    changed = merge_state(short, replay)

    assert changed > 0
    assert short.figures.summary() == replay.figures.summary()
    after = figure_values(short.figures)
    assert all(after[k] >= before[k] for k in before), "a merge only adds what was missing"
    assert after != before
    # Merged facts are the facts of the full run, and the figures agree with a rebuild from them.
    assert dict(short.leads) == dict(replay.leads)
    assert dict(short.deals) == dict(replay.deals)
    rebuilt = rebuild_figures(
        AnalyticsState(
            leads=JsonTable(short.leads), deals=JsonTable(short.deals), receipts=JsonTable(short.receipts)
        )
    )
    assert rebuilt.figures.summary() == short.figures.summary()
    # A second reconciliation finds nothing left to add.
    assert merge_state(short, run(events)) == 0


def test_merging_an_older_replay_never_takes_anything_away(journey):
    """The worker is ahead of the replay (events past its committed offsets): nothing moves."""
    events = _random_history(journey, 9)
    live = run(events)
    summary = live.figures.summary()
    assert merge_state(live, run(events[: len(events) // 2])) == 0
    assert live.figures.summary() == summary


def test_figure_values_name_every_countable_figure(journey):
    values = figure_values(run(full_journey(journey)).figures)
    assert values["funnel:won"] == 1
    assert values["business_samples:lead-qualified"] == 1
    assert values["transport_samples:commitment-flagged"] == 0
    assert "business_samples:lead-verdict" not in values  # no business latency for it


DAY = 86_400.0


def series(state):
    return state.figures.summary()["series"]


def test_transport_latency_over_time_is_per_handoff_per_day_the_receiver_stored_it(journey):
    """Each day with its own count, p50 and p90 (business per day is the KPIs': all handoffs)."""
    day0 = journey.T0.date()
    events = [
        journey.receipt("lead-qualified", "evt-1", 0.002, when=0),
        journey.receipt("lead-qualified", "evt-2", 0.004, when=60),
        journey.receipt("lead-qualified", "evt-3", 0.300, when=DAY + 60),
        journey.receipt("deal-won", "evt-4", 0.5, when=2 * DAY),
        *full_journey(journey),  # a business sample each for lead-qualified and deal-won
    ]
    state = run(events)
    s = series(state)
    days = [(day0 + timedelta(days=n)).isoformat() for n in range(3)]
    transport = s["lead-qualified"]["transport"]
    assert [(d["day"], d["count"]) for d in transport] == [(days[0], 2), (days[1], 1)]
    assert transport[0]["p50"] == pytest.approx(0.002, rel=REL)
    assert transport[0]["p90"] == pytest.approx(0.004, rel=REL)
    assert transport[1]["p90"] == pytest.approx(0.3, rel=REL)
    assert [(d["day"], d["count"]) for d in s["deal-won"]["transport"]] == [(days[2], 1)]
    assert set(s["lead-qualified"]) == {"transport"}
    # The same receipt again (a redelivery, a later store): no day moves.
    again = run([journey.receipt("lead-qualified", "evt-1", 0.010, when=2 * DAY)], state)
    assert series(again) == s


def test_the_series_keeps_the_newest_days_and_survives_a_rebuild(journey):
    events = [journey.receipt("lead-qualified", f"evt-{n}", 0.01, when=n * DAY) for n in range(100)]
    state = run(events)
    transport = series(state)["lead-qualified"]["transport"]
    assert len(transport) == 90  # SERIES_DAYS, up to the newest day with a sample
    assert transport[-1]["day"] == (journey.T0.date() + timedelta(days=99)).isoformat()
    rebuilt = rebuild_figures(
        AnalyticsState(leads=state.leads, deals=state.deals, receipts=state.receipts, records=state.records)
    )
    assert series(rebuilt) == series(state)


def test_a_receipt_stored_before_receipts_had_a_time_counts_overall_but_not_per_day():
    old = ReceiptFact.from_json({"handoff": "deal-won", "latency": 0.2})
    assert old == ReceiptFact("deal-won", 0.2, None)
    assert old.to_json() == {"handoff": "deal-won", "latency": 0.2}
    timed = ReceiptFact("deal-won", 0.3, 1_000.0)
    assert old.merged(timed) == ReceiptFact("deal-won", 0.2, 1_000.0)  # the first store, its time kept
    assert ReceiptFact.from_json(timed.to_json()) == timed


def test_a_histogram_or_a_channels_counts_is_made_once_not_per_folded_event(journey, monkeypatch):
    """The figures make a latency histogram (per handoff and kind, per day) and a channel's
    counts the first time they are needed, not on every fold that touches them."""
    import analytics.domain.figures as figures
    from analytics.domain.histogram import LatencyHistogram

    made: list[object] = []

    class Counted(LatencyHistogram):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(figures, "LatencyHistogram", Counted)
    fromkeys: list[object] = []
    real_dict = dict

    class CountingDict(dict):
        @classmethod
        def fromkeys(cls, keys, value=None):
            fromkeys.append(keys)
            return real_dict.fromkeys(keys, value)

    monkeypatch.setattr(figures, "dict", CountingDict, raising=False)
    run([journey.receipt("lead-qualified", f"evt-{n}", 0.002 + n / 1000) for n in range(50)])
    assert len(made) == 2, "one histogram per handoff and kind, one for the day"
    fromkeys.clear()
    run([journey.captured(f"lead-{n}", "web") for n in range(50)])
    assert len(fromkeys) == 2, "the funnel's and the web channel's counts, each made once"


def test_the_tables_hold_the_folded_fact_objects_and_read_recovered_documents_alike(journey):
    """The worker's tables keep the frozen facts the engine folds (no JSON copy per event); the
    changelog stores their JSON; a state recovered from that JSON folds on to the same facts."""
    events = _random_history(journey, 21)
    live = run(events, AnalyticsState())  # plain dicts: what the faust tables hold
    assert live.leads
    assert live.deals
    assert live.receipts
    assert all(isinstance(v, LeadFacts) for v in live.leads.values())
    assert all(isinstance(v, DealFacts) for v in live.deals.values())
    assert all(isinstance(v, ReceiptFact) for v in live.receipts.values())
    for lead in live.leads.values():
        assert LeadFacts.from_json(json.loads(json.dumps(stored_json(lead)))) == lead
    for deal in live.deals.values():
        assert DealFacts.from_json(json.loads(json.dumps(stored_json(deal)))) == deal
    for receipt in live.receipts.values():
        assert ReceiptFact.from_json(json.loads(json.dumps(stored_json(receipt)))) == receipt
    recovered = run(
        events[:40],
        AnalyticsState(leads=JsonTable(), deals=JsonTable(), receipts=JsonTable()),
    )
    recovered = rebuild_figures(
        AnalyticsState(
            leads=dict(recovered.leads), deals=dict(recovered.deals), receipts=dict(recovered.receipts)
        )
    )
    run(events[40:], recovered)
    assert recovered.figures.summary() == live.figures.summary()
    assert {k: LeadFacts.from_json(v) for k, v in recovered.leads.items()} == dict(live.leads)


def test_each_fold_of_the_facts_changes_its_own_fields_and_keeps_the_others() -> None:
    """The facts are built positionally by each fold (no ``replace``): what ``dataclasses.replace``
    of the changed fields would give, every other field kept."""
    lead = LeadFacts(10.0, "web", (20.0, 30.0), "email", 40.0, 50.0, ("d2",))
    captured = dataclasses.replace(lead, captured_at=5.0, capture_channel="fair")
    assert lead.with_capture(5.0, "fair") == captured
    assert lead.with_qualification(15.0, "fair") == dataclasses.replace(
        lead, qualified_at=(15.0, 20.0, 30.0), qualify_channel="fair"
    )
    assert lead.with_acceptance(35.0) == dataclasses.replace(lead, accepted_at=35.0)
    assert lead.with_verdict(60.0) == dataclasses.replace(lead, answered_at=60.0)
    assert lead.with_deal("d1") == dataclasses.replace(lead, deal_ids=("d1", "d2"))
    deal = DealFacts(10.0, "lead-2", 20.0, 30.0)
    assert deal.with_win(5.0, "lead-1") == dataclasses.replace(deal, won_at=5.0, lead_id="lead-1")
    assert deal.with_onboarding(15.0) == dataclasses.replace(deal, onboarded_at=15.0)
    assert deal.with_first_step(25.0) == dataclasses.replace(deal, first_step_at=25.0)


def test_a_folded_lead_holds_its_facts_in_slots_not_a_dict(journey) -> None:
    """The worker keeps a LeadFacts for every lead it ever folded: slots (no ``__dict__``), about
    120 bytes with its capture's time, against 232 with the dict each ``replace`` filled."""
    import gc
    import tracemalloc

    state = run([journey.captured(f"lead-{i}", when=100 + i) for i in range(10)], AnalyticsState())
    for value in [*state.leads.values(), DealFacts().with_win(1.0, "lead-1"), ReceiptFact("h", 1.0)]:
        assert not hasattr(value, "__dict__")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [LeadFacts().with_capture(float(i), "web") for i in range(2000)]
        per_lead = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_lead < 160, per_lead


def test_a_contribution_is_a_named_tuple_made_and_compared_in_c() -> None:
    """Two to four contributions are made and compared per folded event: a named tuple's
    constructor and ``==`` are C (a frozen dataclass's are Python); same values, same equality."""
    from analytics.domain.figures import NOTHING, Contribution

    assert issubclass(Contribution, tuple)
    web = Contribution(stages=frozenset({"captured"}), channel="web")
    assert web == Contribution(stages=frozenset({"captured"}), channel="web")
    assert web != NOTHING
    assert Contribution() == NOTHING
    assert (web.channel, web.sample, web.day) == ("web", None, None)


def test_a_fold_reads_the_events_time_once_and_folds_new_leads_from_one_shared_empty_fact(
    journey, monkeypatch
) -> None:
    """``apply`` hands the records its ``occurred_at`` in epoch seconds (each ``timestamp()`` of
    pydantic's zone is about 0.9 us) and folds a lead or deal not seen yet from one shared empty
    fact: the same facts, records and figures as before."""
    from analytics.domain import engine, records

    env = journey.qualified("lead-1")
    event = decode(env)
    assert records.changes(env, event, 12.5) == [
        ("lead:lead-1", {"qualified": {"at": 12.5, "channel": "web", "campaign": None}})
    ]
    assert records.changes(env, event) == records.changes(env, event, env.occurred_at.timestamp())
    asked: list[float | None] = []
    real = records.changes

    def changes(envelope: Any, ev: Any, at: float | None = None) -> Any:
        asked.append(at)
        return real(envelope, ev, at)

    monkeypatch.setattr(records, "changes", changes)
    state = AnalyticsState()
    for e in (journey.captured("lead-1"), env, journey.verdict("lead-1"), journey.won("deal-1", "lead-1")):
        apply(state, e, decode(e))
    assert asked
    assert None not in asked, "the engine gives the records the time it read"
    assert state.leads["lead-1"] is not engine.NO_LEAD
    assert state.deals["deal-1"] is not engine.NO_DEAL
    assert LeadFacts() == engine.NO_LEAD, "the shared empty facts stay empty"
    assert DealFacts() == engine.NO_DEAL
    assert state.figures.funnel == {"captured": 1, "qualified": 1, "accepted": 1, "won": 1, "onboarded": 0}


def test_a_leads_contribution_without_latency_is_one_made_once_and_equal_to_a_fresh_one() -> None:
    """``lead_contribution`` takes a lead's contribution without a latency sample from its cache
    by (captured, qualified, accepted, channel): equal to the one made fresh for every lead of
    generated facts (any field left out of the key would make some differ), the same object for
    two leads in the same stages and channel, a fresh one for a lead with a latency sample."""
    from analytics.domain import figures

    rng = random.Random(11)
    times = [None, 100.0, 250.0]
    for _ in range(2000):
        lead = LeadFacts(
            captured_at=rng.choice(times),
            capture_channel=rng.choice([None, "web", "event"]),
            qualified_at=tuple(sorted(rng.sample([50.0, 120.0, 300.0], rng.randrange(0, 3)))),
            qualify_channel=rng.choice([None, "web", "partner"]),
            accepted_at=rng.choice(times),
            answered_at=rng.choice(times),
        )
        assert figures.lead_contribution(lead) == figures._made_lead_contribution(lead), lead
    one, two = (
        LeadFacts(captured_at=1.0, capture_channel="web"),
        LeadFacts(captured_at=2.0, capture_channel="web"),
    )
    assert figures.lead_contribution(one) is figures.lead_contribution(two)
    answered = LeadFacts(qualified_at=(1.0,), answered_at=5.0, accepted_at=5.0, capture_channel="web")
    assert figures.lead_contribution(answered).sample == ("lead-qualified", "business", 4.0)
    assert figures.lead_contribution(answered) is not figures.lead_contribution(answered)


def test_the_lead_contribution_cache_is_bounded(monkeypatch) -> None:
    """Channels are the senders' words: the cache starts over once it holds its bound."""
    from analytics.domain import figures

    monkeypatch.setattr(figures, "_lead_contributions", {})
    monkeypatch.setattr(figures, "LEAD_CONTRIBUTIONS_KEPT", 5)
    for n in range(12):
        figures.lead_contribution(LeadFacts(captured_at=1.0, capture_channel=f"channel-{n}"))
        assert len(figures._lead_contributions) <= 5
    assert figures.lead_contribution(LeadFacts(captured_at=1.0, capture_channel="x")).channel == "x"


def test_a_new_record_is_the_events_slots_and_a_later_event_leaves_them_as_they_were(
    journey, monkeypatch
) -> None:
    """A record seen for the first time is stored as the slots the event brought (no copy of
    each); a later event's join builds a new record and never changes the stored one in place."""
    from analytics.domain import records

    state = AnalyticsState()
    captured = journey.captured("lead-r", "web")
    brought = records.changes(captured, decode(captured))
    (key, slots), *_ = brought
    monkeypatch.setattr(records, "changes", lambda *args, **kwargs: brought)
    apply(state, captured, decode(captured))
    monkeypatch.undo()
    first = state.records[key]
    assert key == "lead:lead-r"
    assert first is slots
    snapshot = json.loads(json.dumps(first))
    qualified = journey.qualified("lead-r", "partner")
    apply(state, qualified, decode(qualified))
    assert first == snapshot  # not changed in place
    after = state.records[key]
    assert after is not first
    assert set(after) == {"captured", "qualified"}
    assert after["captured"] == snapshot["captured"]
    assert after["qualified"]["channel"] == "partner"
