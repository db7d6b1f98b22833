"""Retention in marketing (issue 9) on the real mongod: a lead untouched past its configured
period is anonymised (name and email; the email is its identity, so a unique stand-in; its
custom fields cleared), a
younger one is kept, each change audited as ``system:leads`` / ``RETENTION lead``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeAlias

import pytest
from crm_contracts import utcnow
from crm_platform.audit import AUDIT_LOG
from crm_platform.retention import enforce
from crm_platform.testing import auth_headers
from leads import store

pytestmark = pytest.mark.integration
Leads: TypeAlias = Any  # conftest.Leads
MARKETING = auth_headers(["marketing"], "mia")


async def test_an_untouched_lead_is_anonymised_after_its_period(leads: Leads) -> None:
    db = leads.runtime.store.db
    old, young = [(await leads.capture())["lead"]["id"] for _ in range(2)]
    for lead_id, days in ((old, 31), (young, 29)):
        await db[store.LEADS].update_one(
            {"_id": lead_id},
            {"$set": {"updated_at": utcnow() - timedelta(days=days), "custom": {"nickname": "Ada"}}},
        )
    done = await enforce(leads.runtime.store, store.RETENTION_RULES, {"lead": 30})
    assert done["lead"] >= 1
    gone = (await leads.client.get(f"/leads/{old}", headers=MARKETING)).json()
    assert (gone["name"], gone["email"]) == ("[anonymised]", f"anonymised-{old}@anonymised.example")
    assert gone["custom"] == {}, "a custom text field may be personal data"
    assert (await leads.client.get(f"/leads/{young}", headers=MARKETING)).json()["name"] == "Ada Lovelace"
    entry = await db[AUDIT_LOG].find_one({"record.id": old, "operation": "RETENTION lead"})
    assert entry is not None
    assert entry["actor"]["user_id"] == "system:leads"
    assert await enforce(leads.runtime.store, store.RETENTION_RULES, {"lead": 30}) == {"lead": 0}, "once only"
