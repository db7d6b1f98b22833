"""``PATCH /leads/{id}`` is marketing's human step on a lead: it goes out as ``lead.edited`` v1
(the changed field names only, never values) in the same transaction as the change, on the
real broker and mongod (issue 7: the business latency of ``lead-verdict`` ends at it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import pytest
from crm_contracts import Envelope
from crm_contracts.topics import LEADS_EVENTS
from crm_platform.testing import TopicReader, auth_headers

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads

MARKETING = auth_headers(["marketing"], "mia")


def _edits_of(lead_id: str, reader: TopicReader) -> list[Envelope]:
    return [e for e in reader.envelopes("lead.edited") if e.payload["lead_id"] == lead_id]


async def test_an_edit_goes_out_as_lead_edited_with_field_names_only(
    leads: Leads, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        captured = await leads.capture(company="Engines")
        lead_id, email = captured["lead"]["id"], captured["lead"]["email"]
        body = {"company": "Analytical Engines Ltd", "consent": {"marketing_email": False}}
        r = await leads.client.patch(f"/leads/{lead_id}", json=body, headers=MARKETING)
        assert r.status_code == 200, r.text
        edits = await reader.wait_for(lambda _: _edits_of(lead_id, reader), what="lead.edited")
        assert len(edits) == 1
        env = edits[0]
        assert (env.source, env.schema_version, env.correlation_id) == ("leads", 1, lead_id)
        assert env.payload["changed_fields"] == ["company", "consent.marketing_email"]
        assert (env.payload["edited_by"], env.payload["edited_by_roles"]) == ("user-mia", ["marketing"])
        edited_at = datetime.fromisoformat(env.payload["edited_at"])
        assert edited_at == datetime.fromisoformat(r.json()["updated_at"]), "the moment of the change"
        raw = next(rec.value for rec in reader.records if str(env.event_id).encode() in rec.value)
        for value in (b"Analytical", email.encode(), b"Ada Lovelace"):
            assert value not in raw, "no value of the lead is in the log"
    finally:
        await reader.stop()


async def test_an_edit_that_changes_nothing_emits_nothing_and_bad_input_names_the_field(
    leads: Leads, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, LEADS_EVENTS).start()
    try:
        lead_id = (await leads.capture(company="Engines"))["lead"]["id"]
        same = await leads.client.patch(f"/leads/{lead_id}", json={"company": "Engines"}, headers=MARKETING)
        assert same.status_code == 200, same.text
        blank = await leads.client.patch(f"/leads/{lead_id}", json={"name": " "}, headers=MARKETING)
        assert blank.status_code == 422, blank.text
        assert "name" in blank.text
        unknown = await leads.client.patch(f"/leads/{lead_id}", json={"email": "x@y.z"}, headers=MARKETING)
        assert unknown.status_code == 422, unknown.text
        assert "email" in unknown.text
        # A later real edit shows the log has moved past the no-op: the no-op left no event.
        changed = await leads.client.patch(f"/leads/{lead_id}", json={"campaign": "q2"}, headers=MARKETING)
        assert changed.status_code == 200, changed.text
        edits = await reader.wait_for(lambda _: _edits_of(lead_id, reader), what="lead.edited")
        assert [e.payload["changed_fields"] for e in edits] == [["campaign"]]
    finally:
        await reader.stop()
