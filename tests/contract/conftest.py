from __future__ import annotations

from datetime import UTC, datetime

import pytest
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.events.leads import LeadQualifiedV1


@pytest.fixture
def sample_lead_qualified() -> LeadQualifiedV1:
    return LeadQualifiedV1(
        lead_id="lead-1",
        contact=Contact(name="Ada", email="ada@example.com"),
        company="Acme",
        score=72,
        threshold=60,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=40)],
        source_channel="webinar",
        campaign="q4",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
