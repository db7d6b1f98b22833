"""A minimal department built on the platform, to test the platform's guarantees.

The probe handler stores one ``effects`` document per handled event and bumps a
counter on it, so a second effect for the same event would show as count 2. The handoff
builders give the tests of handoff receipts one ``lead.qualified`` to send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from crm_contracts import Envelope, envelope_for
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.events.leads import LeadCapturedV1, LeadQualifiedV1
from crm_platform.kafka import make_consumer
from crm_platform.mongo import Tx


async def record_effect(tx: Tx, event: Any, envelope: Envelope) -> None:
    await tx.db["effects"].update_one(
        {"_id": str(envelope.event_id)},
        {"$inc": {"count": 1}, "$set": {"name": event.name}},
        upsert=True,
        session=tx.session,
    )


async def count_effect(tx: Tx, event: Any, envelope: Envelope) -> None:
    """``record_effect`` for events without a name (a handoff): the count alone."""
    await tx.db["effects"].update_one(
        {"_id": str(envelope.event_id)}, {"$inc": {"count": 1}}, upsert=True, session=tx.session
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


def qualified(lead_id: str) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        lead_id=lead_id,
        contact=Contact(name="Ada", email=f"{lead_id}@example.com"),
        company="Acme",
        score=72,
        threshold=60,
        score_reasons=[ScoreReason(behaviour=Behaviour.TRIAL_SIGNUP, count=1, points=40)],
        source_channel="web",
        behaviour_summary={Behaviour.TRIAL_SIGNUP: 1},
        consent=Consent(marketing_email=True),
        qualified_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def handoff(lead_id: str) -> Envelope:
    """A ``lead.qualified`` handoff from leads, as marketing's outbox would send it."""
    return envelope_for(qualified(lead_id), source="leads", correlation_id=lead_id)


async def commit_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """``group`` commits ``offsets``, as a member that read that far and went away."""
    consumer = make_consumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(sorted(offsets))  # a manual assignment may commit for its group
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def delete_records_before(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    """What retention does to a partition: its records below ``offset`` are gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=offset)}, timeout_ms=30_000)
    finally:
        await admin.close()
