"""Value objects shared by several events."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from crm_contracts.email import EmailStr
from crm_contracts.envelope import Timestamp


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contact(Value):
    name: str = Field(min_length=1, max_length=200)
    email: EmailStr
    phone: str | None = Field(default=None, max_length=50)
    role: str | None = Field(default=None, max_length=100)


# Base64 of a 12-byte AES-GCM nonce, and of a sealed person's fields (a few hundred bytes at most).
NONCE_LENGTH = 16
MAX_SEALED_LENGTH = 2000


class SealedPerson(Value):
    """A person's personal fields (e-mail, name, phone), sealed with their data key (issue 9,
    crypto-shredding; ``crm_platform.shredding``): AES-256-GCM over their compact JSON, the
    person id and the key's owner as associated data. Readable by the departments that hold
    the person's key (the owner's key topic); unreadable by anyone once erasure destroyed it.

    An event version that carries one keeps its older versions' plaintext fields (the contract
    gate allows only optional additions) with stand-ins in them (:func:`sealed_email`,
    :data:`SEALED_NAME`, no phone): the values are only in here."""

    person_id: str = Field(min_length=1, max_length=100, description="The person's id at the key's owner")
    key_owner: str = Field(
        min_length=1, max_length=50, description="The department whose key topic holds the key"
    )
    nonce: str = Field(min_length=NONCE_LENGTH, max_length=NONCE_LENGTH, description="Base64 AES-GCM nonce")
    ciphertext: str = Field(
        min_length=1, max_length=MAX_SEALED_LENGTH, description="Base64 AES-GCM ciphertext and tag"
    )


SEALED_NAME = "Sealed person"


def sealed_email(person_id: str) -> str:
    """The stand-in e-mail a sealed event carries in its plaintext field: from an opaque id
    alone, never from personal data (the person id; ``lead.captured``, which seals nothing, the
    lead id), in the reserved ``.example`` domain."""
    return f"sealed-{hashlib.sha256(person_id.encode()).hexdigest()[:12]}@sealed.example"


class Consent(Value):
    marketing_email: bool
    captured_at: Timestamp | None = None


class Behaviour(StrEnum):
    PAGE_VIEW = "page_view"
    EMAIL_OPEN = "email_open"
    FORM_SUBMIT = "form_submit"
    TRIAL_SIGNUP = "trial_signup"


class ScoreReason(Value):
    behaviour: Behaviour
    count: int = Field(ge=0)
    points: float


class Money(Value):
    amount: float = Field(ge=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)
