"""The bench's backlog is what leads sends: sealed handoffs, each after its person key record.

bench/scenarios.py builds the records without a service; if they drifted from the contracts
(a field, a version, the key's topic or order) the drain would measure something leads never
produces, or dead-letter every handoff.
"""

from __future__ import annotations

import sys
from pathlib import Path

from crm_contracts import Envelope
from crm_contracts.events.leads import LeadQualifiedV2
from crm_contracts.events.person_keys import LeadPersonKeyIssuedV2
from crm_contracts.registry import model_for
from crm_contracts.topics import LEAD_QUALIFIED, LEADS_PERSON_KEYS
from crm_platform import shredding
from crm_platform.outbox import wire_record
from crm_platform.pseudonym import email_hash

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scenarios


def test_a_sealed_backlog_pair_is_a_key_record_then_a_v2_handoff_it_opens() -> None:
    handoff, issued = scenarios._sealed_templates()
    pairs = [scenarios._sealed_pair(handoff, issued, f"bl-t-{i}", f"p{i}@example.com") for i in range(2)]
    (key_topic, person_id, key_env), (topic, lead, handoff_env) = pairs[0]
    assert (key_topic, topic, lead) == (LEADS_PERSON_KEYS, LEAD_QUALIFIED, "bl-t-0")
    envelopes = []
    for env in (key_env, handoff_env):
        value, headers = wire_record(env, "2026-12-06T00:00:00Z")
        envelopes.append(Envelope.model_validate_json(value))
        assert dict(headers)["correlation_id"] == b"bl-t-0"
    key_record, sealed = envelopes
    # each record's id made as leads makes an event's (crm_contracts.envelope.new_event_id)
    assert [env.event_id.version for env in envelopes] == [7, 7]
    assert (key_record.event_type, key_record.schema_version) == ("lead.person_key_issued", 2)
    assert (sealed.event_type, sealed.schema_version) == ("lead.qualified", 2)
    key_event = model_for(key_record.event_type, 2).model_validate(key_record.payload)
    event = model_for(sealed.event_type, 2).model_validate(sealed.payload)
    assert isinstance(event, LeadQualifiedV2)
    assert isinstance(key_event, LeadPersonKeyIssuedV2)
    assert key_event.email_hash == email_hash("p0@example.com")  # as leads' key records carry it
    assert event.sealed_contact is not None
    assert event.lead_id == "bl-t-0"
    assert event.contact.email.endswith("@sealed.example")
    assert key_event.person_id == person_id == event.sealed_contact.person_id
    opened = shredding.open_sealed(shredding.decode_key(key_event.key), event.sealed_contact)
    assert (opened.email, opened.name) == ("p0@example.com", "Backlog Lead")
    # every handoff a person (and key) of its own, every record an event id of its own
    assert pairs[1][0][1] != person_id
    assert pairs[1][0][2]["event_id"] != key_env["event_id"]
