"""Events owned by marketing (the leads service)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.email import EmailStr
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Behaviour, Consent, Contact, ScoreReason, SealedPerson
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


class LeadCapturedV3(LeadCapturedV2):
    """v2 without the person's e-mail and name (issue 9, crypto-shredding): ``email`` and
    ``name`` hold stand-ins (``sealed_email`` of the lead id, ``SEALED_NAME``). Nobody opens a
    captured event, so marketing emits it with ``sealed_person`` absent: the person is not on
    the log at all (data minimisation; their key is made at their first qualification). Events
    emitted before that decision carry the values in ``sealed_person``, readable with the lead's
    data key (``crm.leads.person-keys``, destroyed on erasure) and still valid. A subclass of
    v2: analytics, which needs neither, reads it as v2."""

    version: ClassVar[int] = 3

    sealed_person: SealedPerson | None = Field(
        default=None,
        description="Absent in new events; in older ones the e-mail and name sealed with the lead's key",
    )


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


class LeadQualifiedV2(LeadQualifiedV1):
    """HANDOFF marketing -> sales: v1 with the contact's name, e-mail and phone sealed (issue 9,
    crypto-shredding) in ``sealed_contact``; ``contact`` keeps stand-ins (and the role). Sales
    opens it with the lead's data key from ``crm.leads.person-keys``."""

    version: ClassVar[int] = 2

    sealed_contact: SealedPerson | None = Field(
        default=None, description="The contact's name, e-mail and phone, sealed with the lead's data key"
    )


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


class EditedField(StrEnum):
    """What marketing may correct on a lead (``PATCH /leads/{id}``); the email is its identity."""

    NAME = "name"
    COMPANY = "company"
    CAMPAIGN = "campaign"
    CONSENT = "consent.marketing_email"


class LeadEditedV1(Event):
    """Marketing changed a lead by hand: which fields, never their values.

    A human step of marketing on the lead (analytics pairs it with sales' verdict: the
    business latency of ``lead-verdict``). Personal data stays out of the log: the payload names
    the changed fields only; their values live in marketing's database and its audit log.
    """

    event_type: ClassVar[str] = "lead.edited"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_EVENTS

    lead_id: str
    changed_fields: list[EditedField] = Field(
        max_length=len(EditedField), description="The fields whose value changed, no values"
    )
    changed_custom_fields: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="The custom fields (their keys, as an admin defined them) whose value changed, no values",
    )
    edited_by: str = Field(min_length=1, max_length=200, description="The user id of who edited it")
    edited_by_roles: list[str] = Field(
        max_length=20, description="That user's roles when they edited it (e.g. marketing)"
    )
    edited_at: Timestamp
    source_channel: str = Field(description="The lead's origin channel (marketing's figures per channel)")

    @model_validator(mode="after")
    def _something_changed(self) -> LeadEditedV1:
        if not self.changed_fields and not self.changed_custom_fields:
            raise ValueError("an edit names at least one changed field")
        return self

    def partition_key(self) -> str:
        return self.lead_id
