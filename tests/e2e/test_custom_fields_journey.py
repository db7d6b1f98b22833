"""Custom fields end to end (issue 9), through the gateway only, every service and the faust
worker as separate processes on the real broker and mongod: an admin defines a lead's custom
fields at marketing, marketing captures leads with values, the 422 names a value that does not
fit, and analytics' KPIs break the leads down by the choice field from ``lead.captured`` v2's
extension map (the text field never reaches analytics)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from crm_platform.devinfra.journey import Gateway, JourneyError, until

pytestmark = pytest.mark.e2e


def test_a_custom_choice_field_reaches_analytics_breakdown(gw: Gateway) -> None:
    run = uuid.uuid4().hex[:6]
    key, note = f"e2e_{run}", f"e2e_note_{run}"
    fields = [  # optional: other tests of the session capture leads without them
        {"key": key, "label": "Segment", "type": "choice", "choices": ["smb", "enterprise"]},
        {"key": note, "label": "Note", "type": "text"},
    ]
    with pytest.raises(JourneyError, match="403"):
        gw.call("maria", "PUT", "/api/leads/custom-fields/lead", json={"fields": fields})
    gw.call("admin", "PUT", "/api/leads/custom-fields/lead", json={"fields": fields})
    defined = gw.get("maria", "/api/leads/custom-fields/lead")
    assert [f["key"] for f in defined["fields"]] == [key, note]

    def capture(segment: str) -> dict[str, Any]:
        body = {
            "name": "Ada",
            "email": f"cf-{uuid.uuid4().hex[:10]}@example.com",
            "source_channel": f"e2e-cf-{run}",
            "consent": {"marketing_email": True},
            "custom": {key: segment, note: "likes tea"},
        }
        return dict(gw.call("maria", "POST", "/api/leads/leads", json=body)["lead"])

    with pytest.raises(JourneyError, match=rf"422.*body\.custom\.{key}"):
        capture("huge")
    leads = [capture("enterprise"), capture("enterprise"), capture("smb")]
    assert leads[0]["custom"] == {key: "enterprise", note: "likes tea"}
    found = gw.get("maria", f"/api/leads/leads?cf={key}=smb&limit=200")
    assert [x["id"] for x in found["items"]] == [leads[2]["id"]]

    def breakdown() -> dict[str, Any] | None:
        lead_fields = gw.get("eve", "/api/analytics/kpis").get("custom_fields", {}).get("lead", {})
        figures = lead_fields.get(key)
        return figures if figures and figures["count"] >= 3 else None

    figures = until(breakdown, timeout=90, what="analytics' breakdown by the custom field")
    assert figures == {
        "type": "choice",
        "count": 3,
        "values": {"enterprise": 2, "smb": 1},
        "sum": None,
        "sum_by_currency": None,
        "earliest": None,
        "latest": None,
    }
    every = gw.get("eve", "/api/analytics/kpis")["custom_fields"]["lead"]
    assert note not in every, "text fields may hold personal data: they never leave marketing"
