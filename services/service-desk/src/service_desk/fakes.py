"""In-memory implementations of ``repository.py``'s Protocols, for unit tests (never production)."""

from __future__ import annotations

import copy
from datetime import datetime

from crm_contracts.events.service_desk import SurveyKind
from crm_platform.action_items.repository import InMemoryActionItems
from crm_platform.uow import FakeUnit

from service_desk.domain.accounts import Account, AccountStatus
from service_desk.domain.checkins import CheckIn
from service_desk.domain.config import ConfigRecord, default_config
from service_desk.domain.health import HealthRecord, HealthRules, RiskChange, RuleSet
from service_desk.domain.raised_items import RaisedItem
from service_desk.domain.renewals import RenewalRecord
from service_desk.domain.reviews import CommitmentReview
from service_desk.domain.roster import CsmEntry, RosterRecord
from service_desk.domain.success_config import SuccessConfig, SuccessConfigRecord
from service_desk.domain.surveys import Survey
from service_desk.domain.tickets import Ticket


class InMemoryAccounts:
    def __init__(self) -> None:
        self.items: dict[str, Account] = {}

    async def get(self, account_id: str) -> Account | None:
        found = self.items.get(account_id)
        return copy.deepcopy(found) if found else None

    async def by_deal(self, deal_id: str) -> Account | None:
        found = next((a for a in self.items.values() if a.deal_id == deal_id), None)
        return copy.deepcopy(found) if found else None

    async def add(self, account: Account) -> None:
        if account.account_id in self.items or await self.by_deal(account.deal_id) is not None:
            raise KeyError(f"account {account.account_id} (deal {account.deal_id}) exists")
        self.items[account.account_id] = copy.deepcopy(account)

    async def save(self, account: Account) -> None:
        if account.account_id not in self.items:
            raise KeyError(f"account {account.account_id} was never added")
        self.items[account.account_id] = copy.deepcopy(account)

    async def renewing(self, *, until: datetime, member: str | None) -> list[Account]:
        found = [
            copy.deepcopy(a)
            for a in self.items.values()
            if a.status == AccountStatus.ACTIVE
            and a.term is not None
            and a.term.renewal_date <= until
            and (member is None or member in (a.csm, a.account_manager))
        ]
        return sorted(found, key=lambda a: a.term.renewal_date if a.term else until)

    async def active(self, member: str | None) -> list[Account]:
        return [
            copy.deepcopy(a)
            for a in self.items.values()
            if a.status == AccountStatus.ACTIVE and (member is None or member in (a.csm, a.account_manager))
        ]


class InMemoryRenewals:
    def __init__(self) -> None:
        self.items: list[RenewalRecord] = []

    async def add(self, record: RenewalRecord) -> None:
        self.items.append(record)

    async def of_account(self, account_id: str) -> list[RenewalRecord]:
        found = [r for r in self.items if r.account_id == account_id]
        return sorted(found, key=lambda r: r.recorded_at, reverse=True)

    async def all(self) -> list[RenewalRecord]:
        return list(self.items)


class InMemoryCheckIns:
    def __init__(self) -> None:
        self.items: list[CheckIn] = []

    async def add(self, checkin: CheckIn) -> None:
        self.items.append(checkin)

    async def of_account(self, account_id: str) -> list[CheckIn]:
        return sorted(
            (c for c in self.items if c.account_id == account_id), key=lambda c: c.held_at, reverse=True
        )


class InMemoryHealth:
    def __init__(self) -> None:
        self.rulesets: list[RuleSet] = []
        self.records: list[HealthRecord] = []
        self.changes: list[RiskChange] = []

    async def rules(self) -> RuleSet:
        return self.rulesets[-1] if self.rulesets else RuleSet(version=1, rules=HealthRules())

    async def add_rules(self, ruleset: RuleSet) -> None:
        self.rulesets.append(ruleset)

    async def add(self, record: HealthRecord) -> None:
        self.records.append(record)

    async def history(self, account_id: str, *, since: datetime | None = None) -> list[HealthRecord]:
        found = [
            r for r in self.records if r.account_id == account_id and (since is None or r.scored_at >= since)
        ]
        return sorted(found, key=lambda r: r.scored_at, reverse=True)

    async def add_risk_change(self, change: RiskChange) -> None:
        self.changes.append(change)

    async def raised(self) -> list[tuple[str, datetime]]:
        return [(c.account_id, c.at) for c in self.changes if c.at_risk]


class InMemoryTickets:
    def __init__(self) -> None:
        self.items: list[Ticket] = []

    async def add(self, ticket: Ticket) -> None:
        if any(t.ticket_id == ticket.ticket_id for t in self.items):
            raise KeyError(f"ticket {ticket.ticket_id} exists")
        self.items.append(copy.deepcopy(ticket))

    async def of_account(self, account_id: str, *, since: datetime | None = None) -> list[Ticket]:
        found = [
            t for t in self.items if t.account_id == account_id and (since is None or t.opened_at >= since)
        ]
        return sorted((copy.deepcopy(t) for t in found), key=lambda t: t.opened_at, reverse=True)

    async def get(self, ticket_id: str) -> Ticket | None:
        found = next((t for t in self.items if t.ticket_id == ticket_id), None)
        return copy.deepcopy(found) if found else None

    async def save(self, ticket: Ticket) -> None:
        self.items = [copy.deepcopy(ticket) if t.ticket_id == ticket.ticket_id else t for t in self.items]


class InMemorySurveys:
    def __init__(self) -> None:
        self.items: dict[str, Survey] = {}

    async def add(self, survey: Survey) -> None:
        self.items[survey.survey_id] = copy.deepcopy(survey)

    async def get(self, survey_id: str) -> Survey | None:
        found = self.items.get(survey_id)
        return copy.deepcopy(found) if found else None

    async def save_answer(self, survey: Survey) -> bool:
        if self.items[survey.survey_id].answered_at is not None:
            return False
        self.items[survey.survey_id] = copy.deepcopy(survey)
        return True

    async def of_account(self, account_id: str) -> list[Survey]:
        found = [s for s in self.items.values() if s.account_id == account_id]
        return sorted(found, key=lambda s: s.sent_at, reverse=True)

    async def for_ticket(self, ticket_id: str) -> Survey | None:
        return next((s for s in self.items.values() if s.ticket_id == ticket_id), None)

    async def last_sent(self, account_id: str, kind: SurveyKind) -> datetime | None:
        sent = [s.sent_at for s in self.items.values() if s.account_id == account_id and s.kind == kind]
        return max(sent, default=None)

    async def latest_answer(self, account_id: str, kind: SurveyKind) -> tuple[int, datetime] | None:
        answered = [
            (s.answered_at, s.score)
            for s in self.items.values()
            if s.account_id == account_id and s.kind == kind and s.answered_at and s.score is not None
        ]
        if not answered:
            return None
        at, score = max(answered)
        return score, at


class InMemorySettings:
    def __init__(self) -> None:
        self.csms: list[CsmEntry] = []
        self.roster_stamp: tuple[datetime | None, str | None] = (None, None)
        self.turns = 0
        self.desk = ConfigRecord(default_config())
        self.success = SuccessConfigRecord(SuccessConfig())

    async def roster(self) -> list[CsmEntry]:
        return list(self.csms)

    async def roster_record(self) -> RosterRecord:
        return RosterRecord(list(self.csms), *self.roster_stamp)

    async def save_roster(self, record: RosterRecord) -> None:
        self.csms, self.roster_stamp = list(record.csms), (record.updated_at, record.updated_by)

    async def take_turn(self) -> int:
        """Like the Mongo counter: a turn is taken even if the transaction then aborts."""
        turn, self.turns = self.turns, self.turns + 1
        return turn

    async def desk_config(self) -> ConfigRecord:
        return self.desk

    async def save_desk_config(self, record: ConfigRecord) -> None:
        self.desk = record

    async def config(self) -> SuccessConfig:
        return self.success.config

    async def config_record(self) -> SuccessConfigRecord:
        return self.success

    async def save_config(self, record: SuccessConfigRecord) -> None:
        self.success = record


class InMemoryReviews:
    def __init__(self) -> None:
        self.items: dict[str, CommitmentReview] = {}

    async def get(self, review_id: str) -> CommitmentReview | None:
        found = self.items.get(review_id)
        return copy.deepcopy(found) if found else None

    async def add(self, review: CommitmentReview) -> None:
        if review.review_id in self.items:
            raise KeyError(f"review {review.review_id} exists")
        self.items[review.review_id] = copy.deepcopy(review)

    async def save(self, review: CommitmentReview) -> None:
        if review.review_id not in self.items:
            raise KeyError(f"review {review.review_id} was never added")
        self.items[review.review_id] = copy.deepcopy(review)

    async def of_deal(self, deal_id: str) -> list[CommitmentReview]:
        found = [copy.deepcopy(r) for r in self.items.values() if r.deal_id == deal_id]
        return sorted(found, key=lambda r: r.requested_at, reverse=True)


class InMemoryRaisedItems:
    def __init__(self) -> None:
        self.items: dict[str, RaisedItem] = {}

    async def get(self, item_id: str) -> RaisedItem | None:
        found = self.items.get(item_id)
        return copy.deepcopy(found) if found else None

    async def add(self, item: RaisedItem) -> None:
        if item.item_id in self.items:
            raise KeyError(f"action item {item.item_id} exists")
        self.items[item.item_id] = copy.deepcopy(item)

    async def save(self, item: RaisedItem) -> None:
        if item.item_id not in self.items:
            raise KeyError(f"action item {item.item_id} was never added")
        self.items[item.item_id] = copy.deepcopy(item)


class FakeSuccessUnit(FakeUnit):
    """The in-memory unit: fakes of every repository; emitted events are kept in ``events``."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts = InMemoryAccounts()
        self.renewals = InMemoryRenewals()
        self.settings = InMemorySettings()
        self.checkins = InMemoryCheckIns()
        self.health = InMemoryHealth()
        self.tickets = InMemoryTickets()
        self.surveys = InMemorySurveys()
        self.reviews = InMemoryReviews()
        self.raised = InMemoryRaisedItems()
        self.action_queue = InMemoryActionItems()
