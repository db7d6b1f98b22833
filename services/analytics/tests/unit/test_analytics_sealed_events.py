"""Analytics needs none of the personal fields, so it never holds a person key (issue 9,
crypto-shredding): the sealed versions (``lead.captured`` v3, ``lead.qualified`` v2,
``deal.won`` v3) fold exactly as their plaintext versions do; ``lead.captured`` v3 as marketing
emits it now (stand-ins, nothing sealed: docs/governance.md section 3) and as it was emitted
before (``sealed_person``) alike. No I/O."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from analytics.domain.engine import AnalyticsState, apply
from analytics.domain.kpis import compute
from crm_contracts import Envelope, decode, envelope_for
from crm_contracts.access import PERSON_KEYS, reads
from crm_contracts.events.common import SEALED_NAME, Consent, sealed_email
from crm_contracts.events.leads import LeadCapturedV2
from crm_contracts.events.sales import DealWonV2
from crm_contracts.topics import LEADS_PERSON_KEYS, SALES_PERSON_KEYS
from crm_platform.shredding import SEAL_RULES, PersonFields, new_key, seal, sealed_event

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
    [captured] = [e for e in sealed if e.event_type == "lead.captured"]
    assert captured.payload.get("sealed_person") is None, "lead.captured: stand-ins, nothing sealed"
    assert _summary(sealed) == _summary(plain)


def _captures(journey: SimpleNamespace) -> list[Envelope]:
    """Captures with custom fields on two channels, one merged (a known lead seen again)."""
    tier = {"tier": {"type": "choice", "value": "gold"}, "seats": {"type": "number", "value": 12}}
    rows: list[tuple[str, str, bool, dict[str, Any]]] = [
        ("lead-1", "web", False, tier),
        ("lead-2", "fair", False, {}),
        ("lead-1", "fair", True, {"tier": {"type": "choice", "value": "silver"}}),
        ("lead-3", "web", False, tier),
    ]
    out = []
    for n, (lead, channel, merged, custom) in enumerate(rows):
        event = LeadCapturedV2.model_validate(
            {
                "lead_id": lead,
                "email": f"{lead}@example.com",
                "name": "Ada Lovelace",
                "company": "Acme",
                "source_channel": channel,
                "consent": Consent(marketing_email=True),
                "merged": merged,
                "custom": custom,
            }
        )
        out.append(envelope_for(event, source="leads", correlation_id=lead, occurred_at=journey.at(n * 60)))
    return out


def _sealed_before(env: Envelope) -> Envelope:
    """``lead.captured`` v3 as marketing emitted it before: the person sealed in ``sealed_person``."""
    payload = env.payload
    person = PersonFields(email=payload["email"], name=payload["name"])
    sealed = seal(new_key(), "p-" + payload["lead_id"], "leads", person).model_dump()
    stand_ins = {"email": sealed_email(sealed["person_id"]), "name": SEALED_NAME}
    return env.model_copy(
        update={"schema_version": 3, "payload": {**payload, **stand_ins, "sealed_person": sealed}}
    )


def _figures(envelopes: list[Envelope]) -> tuple[dict[str, Any], Any]:
    state = AnalyticsState(leads={}, deals={}, receipts={})
    for env in envelopes:
        apply(state, env, decode(env))
    now = max(e.occurred_at for e in envelopes) + timedelta(minutes=1)
    return dict(state.figures.summary()), compute(state.records, now)["custom_fields"]


def test_captures_fold_the_same_as_now_emitted_and_as_sealed_before(journey: SimpleNamespace) -> None:
    """Counts, channels and custom fields: plaintext v2, v3 with stand-ins only (now), v3 with
    ``sealed_person`` (events already on the log) give the same figures."""
    plain = _captures(journey)
    now = [_sealed(env) for env in plain]
    assert {(e.schema_version, e.payload.get("sealed_person")) for e in now} == {(3, None)}
    before = [_sealed_before(env) for env in plain]
    summary, custom = _figures(plain)
    assert summary["channels"]["web"]["captured"] == 2
    assert summary["channels"]["fair"]["captured"] == 1, "the merged capture is no new lead"
    assert custom["lead"]["tier"]["values"] == {"gold": 1, "silver": 1}
    assert _figures(now) == (summary, custom)
    assert _figures(before) == (summary, custom)


def test_analytics_reads_no_key_topic() -> None:
    assert "analytics" not in PERSON_KEYS
    assert LEADS_PERSON_KEYS not in reads("analytics")
    assert SALES_PERSON_KEYS not in reads("analytics")
