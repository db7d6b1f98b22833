"""The same person gets the same pseudonym in two departments (issue 9, field-level rules).

Leads and sales run in this process with databases of their own and one install key
(``CRM_PSEUDONYM_KEY``, not the development key, so the key really comes from the settings).
Marketing captures a person in leads; sales creates a contact for the same person (another
spelling of the address, another spacing of the name). An analyst (granted sales' contacts
in sales' policy, as an administrator would) reads both: the pseudonyms agree, differ from the
development key's, and neither answer holds the address or the name.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym
from crm_platform.testing import auth_headers, grant_for_test, isolated_settings, running_app, token_for
from leads.main import create_app as leads_app
from leads.settings import LeadsSettings
from sales.main import create_app as sales_app
from sales.settings import SalesSettings

pytestmark = [pytest.mark.integration]

KEY = "an-install-key-for-this-test-only-0123456789"
ANALYST = auth_headers(["analyst"], "pseudo-analyst")


async def test_one_person_has_one_pseudonym_in_leads_and_in_sales(
    kafka_bootstrap: str, mongodb_uri: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {"CRM_PSEUDONYM_KEY": KEY, "CRM_CONSUMER_ENABLED": False}
    leads = leads_app(isolated_settings(LeadsSettings, "leads", kafka_bootstrap, mongodb_uri, **env))
    sales = sales_app(isolated_settings(SalesSettings, "sales", kafka_bootstrap, mongodb_uri, **env))
    async with AsyncExitStack() as stack:
        lc = await stack.enter_async_context(running_app(leads))
        sc = await stack.enter_async_context(running_app(sales))
        await grant_for_test(sales.state.runtime, {"analyst": {"sales.accounts.manage"}})

        body = {"name": "Grace Hopper", "email": f"grace.{tag}@example.com", "source_channel": "webinar",
                "consent": {"marketing_email": True}}  # fmt: skip
        r = await lc.post("/leads", json=body, headers=auth_headers(["marketing"], "mia"))
        assert r.status_code == 201, r.text
        lead_id = r.json()["lead"]["id"]
        rep = {"Authorization": f"Bearer {token_for(['sales_rep'], 'rhea', user_id='rhea')}"}
        contact = {"name": " grace   HOPPER", "email": f"Grace.{tag}@Example.com ", "source": "referral"}
        r = await sc.post("/contacts", json=contact, headers=rep)
        assert r.status_code == 201, r.text
        contact_id = r.json()["id"]

        in_leads = (await lc.get(f"/leads/{lead_id}", headers=ANALYST)).json()
        # (an analyst may not search sales' contacts by words: docs/governance.md, section 2)
        r = await sc.get(f"/contacts/{contact_id}", headers=ANALYST)
        assert r.status_code == 200, r.text
        in_sales = r.json()
    assert (in_leads["email"], in_leads["name"]) == (in_sales["email"], in_sales["name"])
    assert in_leads["email"] == pseudonym("email", f"grace.{tag}@example.com", KEY)
    assert in_leads["email"] != pseudonym("email", f"grace.{tag}@example.com", DEV_PSEUDONYM_KEY)
    for seen in (in_leads, in_sales):
        assert tag not in str(seen)
        assert "Grace" not in str(seen)
