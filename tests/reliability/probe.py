"""A minimal department built on the platform, to test the platform's guarantees.

The probe handler stores one ``effects`` document per handled event and bumps a
counter on it, so a second effect for the same event would show as count 2.
"""

from __future__ import annotations

from typing import Any

from crm_contracts import Envelope, envelope_for
from crm_contracts.events.common import Consent
from crm_contracts.events.leads import LeadCapturedV1
from crm_platform.mongo import Tx


async def record_effect(tx: Tx, event: Any, envelope: Envelope) -> None:
    await tx.db["effects"].update_one(
        {"_id": str(envelope.event_id)},
        {"$inc": {"count": 1}, "$set": {"name": event.name}},
        upsert=True,
        session=tx.session,
    )


def captured(lead_id: str, name: str) -> LeadCapturedV1:
    return LeadCapturedV1(
        lead_id=lead_id,
        email=f"{lead_id}@example.com",
        name=name,
        company="Acme",
        source_channel="web",
        consent=Consent(marketing_email=True),
        merged=False,
    )


def envelope(lead_id: str, name: str) -> Envelope:
    return envelope_for(captured(lead_id, name), source="reliability-test", correlation_id=lead_id)
