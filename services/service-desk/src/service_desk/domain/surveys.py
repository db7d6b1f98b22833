"""Surveys the customer answers: CSAT after a ticket, NPS on a schedule, through a signed,
single-use, expiring link that needs no login.

A link's token is ``<survey id>.<expiry, epoch seconds>.<HMAC-SHA256 of both, base64url>``
keyed with the desk's secret: only the desk can make one, a changed id or expiry breaks the
signature, and the stored survey says whether it was answered already. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crm_contracts.events.service_desk import SurveyAnsweredV1, SurveyKind
from crm_platform.errors import Conflict, DomainError, RuleViolation

SCALES: dict[SurveyKind, tuple[int, int]] = {SurveyKind.CSAT: (1, 5), SurveyKind.NPS: (0, 10)}
MAX_TOKEN_LENGTH = 200


class SurveyLinkInvalid(DomainError):
    """Not a link this desk signed (forged, altered or garbled)."""

    status_code = 403
    code = "survey_link_invalid"


class SurveyLinkExpired(DomainError):
    status_code = 410
    code = "survey_link_expired"


@dataclass(kw_only=True)
class Survey:
    """One survey sent to a customer; ``answer`` records the reply once, before the link expires."""

    survey_id: str
    account_id: str
    account_name: str
    kind: SurveyKind
    ticket_id: str | None = None
    sent_at: datetime
    expires_at: datetime
    sent_by: str
    answered_at: datetime | None = None
    score: int | None = None
    comment: str | None = None

    def answer(self, score: int, comment: str | None, *, now: datetime) -> None:
        """The customer's answer, once, before the link expires."""
        if self.answered_at is not None:
            raise Conflict(
                "this survey was already answered; a link works once", code="survey_already_answered"
            )
        if now >= self.expires_at:
            raise SurveyLinkExpired(f"this survey link expired at {self.expires_at.isoformat()}")
        low, high = SCALES[self.kind]
        if isinstance(score, bool) or not low <= score <= high:
            raise RuleViolation(f"a {self.kind.value} score is {low} to {high}", field="score", value=score)
        self.score, self.comment, self.answered_at = score, (comment or "").strip() or None, now

    def answered_event(self) -> SurveyAnsweredV1:
        """``survey.answered`` (only for an answered survey)."""
        assert self.score is not None
        assert self.answered_at is not None
        return SurveyAnsweredV1(
            survey_id=self.survey_id,
            account_id=self.account_id,
            kind=self.kind,
            score=self.score,
            ticket_id=self.ticket_id,
            has_comment=self.comment is not None,
            sent_at=self.sent_at,
            answered_at=self.answered_at,
        )


def new_survey(
    *,
    survey_id: str,
    account_id: str,
    account_name: str,
    kind: SurveyKind,
    ticket_id: str | None,
    by: str,
    now: datetime,
    valid_days: int,
) -> Survey:
    return Survey(
        survey_id=survey_id,
        account_id=account_id,
        account_name=account_name,
        kind=kind,
        ticket_id=ticket_id,
        sent_at=now,
        expires_at=now + timedelta(days=valid_days),
        sent_by=by,
    )


def _mac(secret: bytes, survey_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"{survey_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, survey: Survey) -> str:
    expires = int(survey.expires_at.timestamp())
    return f"{survey.survey_id}.{expires}.{_mac(secret, survey.survey_id, expires)}"


def verify(secret: bytes, token: str, *, now: datetime) -> str:
    """The survey id a genuine, unexpired token names; 403 for anything forged, 410 when expired."""
    parts = token.split(".") if len(token) <= MAX_TOKEN_LENGTH else []
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        raise SurveyLinkInvalid("this is not a survey link of ours")
    survey_id, expires, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(mac.encode(), _mac(secret, survey_id, expires).encode()):
        raise SurveyLinkInvalid("this is not a survey link of ours")
    if now >= datetime.fromtimestamp(expires, UTC):
        raise SurveyLinkExpired("this survey link expired")
    return survey_id


def nps_due(last_sent_at: datetime | None, *, every_days: int, now: datetime) -> bool:
    return last_sent_at is None or now - last_sent_at >= timedelta(days=every_days)
