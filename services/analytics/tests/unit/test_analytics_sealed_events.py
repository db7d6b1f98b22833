"""Analytics needs none of the personal fields, so it never holds a person key (issue 9,
crypto-shredding): the sealed versions (``lead.captured`` v3, ``lead.qualified`` v2,
``deal.won`` v3) fold exactly as their plaintext versions do. No I/O."""

from __future__ import annotations

from types import SimpleNamespace

from analytics.domain.engine import AnalyticsState, apply
from crm_contracts import Envelope, decode
from crm_contracts.access import PERSON_KEYS, reads
from crm_contracts.events.leads import LeadCapturedV2
from crm_contracts.events.sales import DealWonV2
from crm_contracts.topics import LEADS_PERSON_KEYS, SALES_PERSON_KEYS
from crm_platform.shredding import SEAL_RULES, sealed_event

PLAIN_NEXT: dict[tuple[str, int], type[LeadCapturedV2] | type[DealWonV2]] = {
    ("lead.captured", 1): LeadCapturedV2,
    ("deal.won", 1): DealWonV2,
}


def _sealed(env: Envelope) -> Envelope:
    event = decode(env)
    newer = PLAIN_NEXT.get((env.event_type, env.schema_version))
    if newer is not None:
        event = newer.model_validate(env.payload)
    if (event.event_type, event.version) not in SEAL_RULES:
        return env
    sealed, _ = sealed_event(event, "sales" if event.event_type == "deal.won" else "leads")
    return env.model_copy(update={"schema_version": sealed.version, "payload": sealed.to_payload()})


def _summary(envelopes: list[Envelope]) -> dict[str, object]:
    state = AnalyticsState(leads={}, deals={}, receipts={})
    for env in envelopes:
        apply(state, env, decode(env))
    return dict(state.figures.summary())


def test_a_sealed_journey_gives_the_same_figures_as_a_plaintext_one(journey: SimpleNamespace) -> None:
    plain = [
        journey.captured("lead-1", "web", when=0),
        journey.qualified("lead-1", "web", when=60),
        journey.verdict("lead-1", "accepted", when=360),
        journey.won("deal-1", "lead-1", when=3600),
        journey.first_step("deal-1", when=7200),
    ]
    sealed = [_sealed(env) for env in plain]
    versions = {(e.event_type, e.schema_version) for e in sealed}
    assert {("lead.captured", 3), ("lead.qualified", 2), ("deal.won", 3)} <= versions
    assert _summary(sealed) == _summary(plain)


def test_analytics_reads_no_key_topic() -> None:
    assert "analytics" not in PERSON_KEYS
    assert LEADS_PERSON_KEYS not in reads("analytics")
    assert SALES_PERSON_KEYS not in reads("analytics")
