"""Value objects shared by several events."""

from __future__ import annotations

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
