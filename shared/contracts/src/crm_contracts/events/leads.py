"""Events owned by marketing (the leads service)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.email import EmailStr
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason
from crm_contracts.extensions import Extensions


class LeadCapturedV1(Event):
    event_type: ClassVar[str] = "lead.captured"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_EVENTS

    lead_id: str
    email: EmailStr
    name: str
    company: str
    source_channel: str
    campaign: str | None = None
    consent: Consent
    merged: bool = Field(description="True when the email matched an existing lead")

    def partition_key(self) -> str:
        return self.lead_id


class LeadCapturedV2(LeadCapturedV1):
    """v1 plus the lead's custom field values (the extension map, ``crm_contracts.extensions``;
    text fields are never carried). A subclass of v1, so every consumer that handles v1
    handles v2."""

    version: ClassVar[int] = 2

    custom: Extensions = Field(default_factory=dict)


class BehaviourRecordedV1(Event):
    event_type: ClassVar[str] = "lead.behaviour_recorded"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_EVENTS

    lead_id: str
    behaviour: Behaviour
    score: float
    source_channel: str

    def partition_key(self) -> str:
        return self.lead_id


class LeadQualifiedV1(Event):
    """HANDOFF marketing -> sales: a lead worth a salesperson's time."""

    event_type: ClassVar[str] = "lead.qualified"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEAD_QUALIFIED

    lead_id: str
    contact: Contact
    company: str
    score: float
    threshold: float
    score_reasons: list[ScoreReason]
    source_channel: str
    campaign: str | None = None
    behaviour_summary: dict[Behaviour, int]
    consent: Consent
    qualified_at: Timestamp

    def partition_key(self) -> str:
        return self.lead_id


class LeadStatusChangedV1(Event):
    """The lead's status after sales' verdict (closes marketing's loop)."""

    event_type: ClassVar[str] = "lead.status_changed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_EVENTS

    lead_id: str
    status: str
    reason_code: str | None = None
    source_channel: str

    def partition_key(self) -> str:
        return self.lead_id
