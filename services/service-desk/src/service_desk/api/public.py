"""The customer's side of a survey: no login, a signed single-use link that expires.

Reached through the gateway at ``/public/service-desk/surveys/{token}`` (its public route
table); a forged or altered link is 403, an expired one 410, an answered one 409.
"""

from __future__ import annotations

from datetime import datetime

from crm_contracts.events.service_desk import SurveyKind
from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from service_desk.api.deps import Secret, UowDep
from service_desk.api.models import Body
from service_desk.domain.surveys import MAX_TOKEN_LENGTH, SCALES
from service_desk.handlers import success as lifecycle

router = APIRouter(prefix="/public/surveys", tags=["surveys (customer, no login)"])
Token = Path(min_length=1, max_length=MAX_TOKEN_LENGTH, description="The token of the survey link")

QUESTIONS = {
    SurveyKind.CSAT: "How satisfied are you with how we handled your request? (1 = unhappy, 5 = happy)",
    SurveyKind.NPS: "How likely are you to recommend us to a friend or colleague? (0 = no, 10 = surely)",
}


class SurveyQuestion(BaseModel):
    kind: SurveyKind
    account_name: str
    question: str
    min_score: int
    max_score: int
    expires_at: datetime
    answered: bool


class AnswerIn(Body):
    score: int = Field(ge=0, le=10, description="CSAT 1-5, NPS 0-10")
    comment: str | None = Field(default=None, max_length=4000)


class Thanks(BaseModel):
    kind: SurveyKind
    score: int
    answered_at: datetime


@router.get("/{token}", response_model=SurveyQuestion, summary="The survey behind a link")
async def get_survey(uow: UowDep, secret: Secret, token: str = Token) -> SurveyQuestion:
    survey = await lifecycle.survey_by_link(uow, token, secret)
    low, high = SCALES[survey.kind]
    return SurveyQuestion(
        kind=survey.kind,
        account_name=survey.account_name,
        question=QUESTIONS[survey.kind],
        min_score=low,
        max_score=high,
        expires_at=survey.expires_at,
        answered=survey.answered_at is not None,
    )


@router.post("/{token}", response_model=Thanks, summary="Answer the survey (once)")
async def answer(body: AnswerIn, uow: UowDep, secret: Secret, token: str = Token) -> Thanks:
    survey = await lifecycle.answer_survey(uow, token, body.score, body.comment, secret)
    assert survey.score is not None
    assert survey.answered_at is not None
    return Thanks(kind=survey.kind, score=survey.score, answered_at=survey.answered_at)
