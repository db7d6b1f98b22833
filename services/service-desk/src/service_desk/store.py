"""The service desk's own collections: the MongoDB implementations of ``repository.py``'s
Protocols (inside a handler's transaction: every read and write passes ``session=tx.session``),
the indexes, and the read-side queries the API lists with (``list_*``, no transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from crm_contracts.events.common import Money
from crm_contracts.events.sales import Commitment
from crm_contracts.events.service_desk import CommitmentDecision, SurveyKind
from crm_platform import custom_fields_api
from crm_platform.action_items.repository import MongoActionItems
from crm_platform.counters import RoundRobinCounter
from crm_platform.erasure import Related, Target, with_person_hashes
from crm_platform.mongo import Tx
from crm_platform.paging import Sort, index_specs, keyset, page, sorts, text_search
from crm_platform.retention import ANONYMISED, Action, Rule
from crm_platform.uow import MongoUnit
from pydantic import TypeAdapter
from pymongo import ASCENDING, DESCENDING, TEXT
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from service_desk.domain.accounts import Account, AccountStatus
from service_desk.domain.checkins import CheckIn
from service_desk.domain.config import ConfigRecord, ServiceDeskConfig, default_config
from service_desk.domain.health import HealthRecord, HealthRules, RiskChange, RuleSet
from service_desk.domain.raised_items import RaisedItem, RaisedSource, RaisedStep
from service_desk.domain.renewals import RenewalRecord
from service_desk.domain.reviews import CommitmentReview, ReviewStatus
from service_desk.domain.roster import CsmEntry, RosterRecord
from service_desk.domain.success_config import SuccessConfig, SuccessConfigRecord
from service_desk.domain.surveys import Survey
from service_desk.domain.tickets import Ticket

Doc = dict[str, Any]

ACCOUNTS = "accounts"
TICKETS = "tickets"
SETTINGS = "settings"  # the roster and the config, one document each
COUNTERS = "counters"
RENEWALS = "renewals"
CHECKINS = "checkins"
HEALTH_SCORES = "health_scores"
HEALTH_RULES = "health_rules"
CHURN_WARNINGS = "churn_warnings"
SURVEYS = "surveys"
REVIEWS = "commitment_reviews"
RAISED = "raised_action_items"  # the items customer success raised, with their outcomes

ROSTER_ID = "csm_roster"
CONFIG_ID = "config"
SUCCESS_CONFIG_ID = "success_config"
ROUND_ROBIN_ID = "csm_round_robin"
CSM_TURNS = RoundRobinCounter(ROUND_ROBIN_ID, collection=COUNTERS, field="turn")


async def ensure_indexes(db: AsyncDatabase[Doc]) -> None:
    # One account per won deal, whatever the event id it arrives under.
    await db[ACCOUNTS].create_index("deal_id", unique=True, name="deal_id_unique")
    await db[ACCOUNTS].create_index([("csm", ASCENDING), ("created_at", DESCENDING)], name="by_csm")
    await db[ACCOUNTS].create_index([("created_at", DESCENDING)], name="by_created")
    await db[ACCOUNTS].create_index(
        [("account_manager", ASCENDING), ("created_at", DESCENDING)], name="by_account_manager"
    )
    await db[ACCOUNTS].create_index(
        [("status", ASCENDING), ("term.renewal_date", ASCENDING)], name="by_renewal"
    )
    await db[RENEWALS].create_index(
        [("account_id", ASCENDING), ("recorded_at", DESCENDING)], name="by_account"
    )
    await db[TICKETS].create_index([("account_id", ASCENDING), ("opened_at", DESCENDING)], name="by_account")
    await db[TICKETS].create_index([("status", ASCENDING), ("opened_at", DESCENDING)], name="by_status")
    await db[TICKETS].create_index([("assignee", ASCENDING), ("opened_at", DESCENDING)], name="by_assignee")
    await ensure_list_indexes(db)
    await db[TICKETS].create_index([("status", ASCENDING), ("resolved_at", ASCENDING)], name="by_resolved")
    # Collections used inside transactions exist up front.
    await db[CHECKINS].create_index([("account_id", ASCENDING), ("held_at", DESCENDING)], name="by_account")
    await db[HEALTH_SCORES].create_index(
        [("account_id", ASCENDING), ("scored_at", DESCENDING)], name="by_account"
    )
    await db[HEALTH_RULES].create_index([("version", DESCENDING)], name="by_version", unique=True)
    await db[CHURN_WARNINGS].create_index([("account_id", ASCENDING), ("at", DESCENDING)], name="by_account")
    await db[SURVEYS].create_index(
        [("account_id", ASCENDING), ("kind", ASCENDING), ("sent_at", DESCENDING)], name="by_account"
    )
    await db[SURVEYS].create_index(
        "ticket_id", name="by_ticket", unique=True, partialFilterExpression={"ticket_id": {"$type": "string"}}
    )
    await db[REVIEWS].create_index([("deal_id", ASCENDING), ("requested_at", DESCENDING)], name="by_deal")
    await db[REVIEWS].create_index([("status", ASCENDING), ("received_at", ASCENDING)], name="by_status")
    await db[RAISED].create_index([("account_id", ASCENDING), ("raised_at", DESCENDING)], name="by_account")
    await db[RAISED].create_index([("department", ASCENDING), ("status", ASCENDING)], name="by_department")
    existing = set(await db.list_collection_names())
    for name in (
        RAISED,
        SETTINGS,
        COUNTERS,
        RENEWALS,
        CHECKINS,
        HEALTH_SCORES,
        HEALTH_RULES,
        CHURN_WARNINGS,
        SURVEYS,
    ):
        if name not in existing:
            await db.create_collection(name)


# Entity <-> document. A document is the entity's fields (``asdict``: enums, Decimals and
# datetimes as they are, the client encodes them) under ``_id``; reading one back validates it
# into the dataclass with pydantic (enums and amounts from their stored form, Decimal128 or an
# older double; fields an older document holds and the entity does not know are ignored).
_ACCOUNT = TypeAdapter(Account)
_TICKET = TypeAdapter(Ticket)
_RENEWAL = TypeAdapter(RenewalRecord)
_CHECKIN = TypeAdapter(CheckIn)
_HEALTH_RECORD = TypeAdapter(HealthRecord)
_RULESET = TypeAdapter(RuleSet)
_SURVEY = TypeAdapter(Survey)


def _without_id(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "_id"}


# Where the service desk's database holds people (crm_platform.erasure): an account's contacts;
# the account's tickets, check-ins and surveys are searched for mentions of them.
ACCOUNT_PEOPLE = Target(
    ACCOUNTS,
    emails=("contacts.email",),
    related=(Related(TICKETS, "account_id"), Related(CHECKINS, "account_id"), Related(SURVEYS, "account_id")),
)
ERASURE_TARGETS = (ACCOUNT_PEOPLE,)


def account_doc(account: Account) -> Doc:
    return with_person_hashes({"_id": account.account_id, **asdict(account)}, ACCOUNT_PEOPLE)


def account_from_doc(doc: Doc) -> Account:
    return _ACCOUNT.validate_python(_without_id(doc))


def ticket_doc(ticket: Ticket) -> Doc:
    return {"_id": ticket.ticket_id, **asdict(ticket)}


def ticket_from_doc(doc: Doc) -> Ticket:
    return _TICKET.validate_python(_without_id(doc))


def survey_doc(survey: Survey) -> Doc:
    return {"_id": survey.survey_id, **asdict(survey)}


def survey_from_doc(doc: Doc) -> Survey:
    return _SURVEY.validate_python(_without_id(doc))


def ruleset_doc(ruleset: RuleSet) -> Doc:
    return {**asdict(ruleset), "rules": ruleset.rules.model_dump(mode="python")}


def _book(member: str) -> Doc:
    """The accounts a CSM manages, as CSM or as account manager."""
    return {"$or": [{"csm": member}, {"account_manager": member}]}


class _Collection:
    def __init__(self, db: AsyncDatabase[Doc], session: AsyncClientSession | None = None) -> None:
        self.db = db
        self.session = session


class MongoAccounts(_Collection):
    async def get(self, account_id: str) -> Account | None:
        doc = await self.db[ACCOUNTS].find_one({"_id": account_id}, session=self.session)
        return account_from_doc(doc) if doc else None

    async def by_deal(self, deal_id: str) -> Account | None:
        doc = await self.db[ACCOUNTS].find_one({"deal_id": deal_id}, session=self.session)
        return account_from_doc(doc) if doc else None

    async def add(self, account: Account) -> None:
        await self.db[ACCOUNTS].insert_one(account_doc(account), session=self.session)

    async def save(self, account: Account) -> None:
        doc = account_doc(account)
        await self.db[ACCOUNTS].update_one({"_id": doc.pop("_id")}, {"$set": doc}, session=self.session)

    async def renewing(self, *, until: datetime, member: str | None) -> list[Account]:
        query: Doc = {"status": {"$ne": AccountStatus.CHURNED.value}, "term.renewal_date": {"$lte": until}}
        if member is not None:
            query |= _book(member)
        cursor = self.db[ACCOUNTS].find(query, session=self.session).sort("term.renewal_date", ASCENDING)
        return [account_from_doc(d) for d in await cursor.limit(5000).to_list()]

    async def active(self, member: str | None) -> list[Account]:
        query: Doc = {"status": {"$ne": AccountStatus.CHURNED.value}}
        if member is not None:
            query |= _book(member)
        cursor = self.db[ACCOUNTS].find(query, session=self.session).sort("created_at", ASCENDING)
        return [account_from_doc(d) for d in await cursor.limit(20000).to_list()]


# -- the lists (crm_platform.paging: text search, filters, sort, cursor pages on an index) -------

ACCOUNT_SORTS = sorts(
    Sort("newest", "created_at"),
    Sort("oldest", "created_at", descending=False),
    Sort("name", "name", descending=False),
    Sort("renewal", "term.renewal_date", descending=False),
)
TICKET_SORTS = sorts(
    Sort("newest", "opened_at"),
    Sort("oldest", "opened_at", descending=False),
    Sort("due", "resolution_due_at", descending=False),
)
_ACCOUNT_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("csm",), ("account_manager",), ("status",))
_TICKET_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("account_id",), ("status",), ("assignee",))


async def ensure_list_indexes(db: AsyncDatabase[Doc]) -> None:
    """One index per (filter, order) of GET /accounts and GET /tickets, and their text indexes."""
    for col, prefixes, orders in (
        (ACCOUNTS, _ACCOUNT_PREFIXES, ACCOUNT_SORTS),
        (TICKETS, _TICKET_PREFIXES, TICKET_SORTS),
    ):
        for keys, name in index_specs("list", prefixes, orders.values()):
            await db[col].create_index(keys, name=name)
    await db[ACCOUNTS].create_index(
        [("name", TEXT), ("contacts.name", TEXT), ("contacts.email", TEXT)],
        name="search",
        default_language="none",
    )
    await db[TICKETS].create_index(
        [("subject", TEXT), ("request", TEXT), ("account_name", TEXT)], name="search", default_language="none"
    )
    await custom_fields_api.ensure_index(db, TICKETS)  # ?cf= filters on tickets' custom fields


@dataclass(frozen=True)
class AccountQuery:
    """What GET /accounts filters, searches and sorts on (``member``: a CSM's book)."""

    member: str | None = None
    onboarding: str | None = None
    deal_id: str | None = None
    status: str | None = None
    tier: str | None = None
    q: str | None = None
    sort: str = "newest"

    def filter(self) -> Doc:
        fields = (
            ("onboarding.status", self.onboarding), ("deal_id", self.deal_id), ("status", self.status),
            ("tier", self.tier),
        )  # fmt: skip
        query: Doc = {k: v for k, v in fields if v is not None}
        if self.member is not None:
            query |= _book(self.member)
        if self.q:
            query |= text_search(self.q)
        return query


def find_accounts(db: AsyncDatabase[Doc], query: AccountQuery, cursor: str | None = None) -> Any:
    """The cursor GET /accounts and its export read (and tests ``explain``)."""
    sort = ACCOUNT_SORTS[query.sort]
    return db[ACCOUNTS].find(keyset(query.filter(), sort, cursor)).sort(sort.spec)


async def list_accounts(
    db: AsyncDatabase[Doc], query: AccountQuery, *, limit: int = 100, cursor: str | None = None
) -> tuple[list[Account], str | None]:
    """A page of the API's listing (default newest first) and the next page's cursor."""
    docs = await find_accounts(db, query, cursor).limit(limit + 1).to_list()
    found, next_cursor = page(docs, limit, ACCOUNT_SORTS[query.sort])
    return [account_from_doc(d) for d in found], next_cursor


async def export_accounts(db: AsyncDatabase[Doc], query: AccountQuery) -> AsyncIterator[Account]:
    async for doc in find_accounts(db, query).batch_size(1000):
        yield account_from_doc(doc)


@dataclass(frozen=True)
class TicketQuery:
    """What GET /tickets filters, searches and sorts on (``visible_to``: a CSM's user id)."""

    account_id: str | None = None
    status: str | None = None
    priority: str | None = None
    assignee: str | None = None
    visible_to: str | None = None
    q: str | None = None
    sort: str = "newest"
    custom: Doc = field(default_factory=dict)  # crm_platform.custom_fields.filter_of (?cf=)


async def _ticket_filter(db: AsyncDatabase[Doc], query: TicketQuery) -> Doc:
    """The query's filter; a CSM's (``visible_to``) keeps the tickets assigned to them and those
    of the accounts they manage."""
    fields = (
        ("account_id", query.account_id), ("status", query.status), ("priority", query.priority),
        ("assignee", query.assignee),
    )  # fmt: skip
    flt: Doc = {**query.custom, **{k: v for k, v in fields if v is not None}}
    if query.visible_to is not None:
        ids = [str(d["_id"]) for d in await db[ACCOUNTS].find(_book(query.visible_to), {"_id": 1}).to_list()]
        flt["$or"] = [{"assignee": query.visible_to}, {"account_id": {"$in": ids}}]
    if query.q:
        flt |= text_search(query.q)
    return flt


async def find_tickets(db: AsyncDatabase[Doc], query: TicketQuery, cursor: str | None = None) -> Any:
    """The cursor GET /tickets and its export read (and tests ``explain``)."""
    sort = TICKET_SORTS[query.sort]
    return db[TICKETS].find(keyset(await _ticket_filter(db, query), sort, cursor)).sort(sort.spec)


async def list_tickets(
    db: AsyncDatabase[Doc], query: TicketQuery, *, limit: int = 100, cursor: str | None = None
) -> tuple[list[Ticket], str | None]:
    """A page of the API's listing (default newest first) and the next page's cursor."""
    docs = await (await find_tickets(db, query, cursor)).limit(limit + 1).to_list()
    found, next_cursor = page(docs, limit, TICKET_SORTS[query.sort])
    return [ticket_from_doc(d) for d in found], next_cursor


async def export_tickets(db: AsyncDatabase[Doc], query: TicketQuery) -> AsyncIterator[Ticket]:
    async for doc in (await find_tickets(db, query)).batch_size(1000):
        yield ticket_from_doc(doc)


class MongoRenewals(_Collection):
    async def add(self, record: RenewalRecord) -> None:
        await self.db[RENEWALS].insert_one({"_id": record.renewal_id, **asdict(record)}, session=self.session)

    async def of_account(self, account_id: str) -> list[RenewalRecord]:
        cursor = self.db[RENEWALS].find({"account_id": account_id}, session=self.session)
        docs = await cursor.sort("recorded_at", DESCENDING).limit(1000).to_list()
        return [_RENEWAL.validate_python(_without_id(d)) for d in docs]

    async def all(self) -> list[RenewalRecord]:
        docs = await self.db[RENEWALS].find({}, session=self.session).to_list()
        return [_RENEWAL.validate_python(_without_id(d)) for d in docs]


class MongoCheckIns(_Collection):
    async def add(self, checkin: CheckIn) -> None:
        await self.db[CHECKINS].insert_one(
            {"_id": checkin.checkin_id, **asdict(checkin)}, session=self.session
        )

    async def of_account(self, account_id: str) -> list[CheckIn]:
        cursor = self.db[CHECKINS].find({"account_id": account_id}, session=self.session)
        docs = await cursor.sort("held_at", DESCENDING).limit(1000).to_list()
        return [_CHECKIN.validate_python(_without_id(d)) for d in docs]


class MongoHealth(_Collection):
    async def rules(self) -> RuleSet:
        doc = await self.db[HEALTH_RULES].find_one({}, sort=[("version", DESCENDING)], session=self.session)
        return _RULESET.validate_python(_without_id(doc)) if doc else RuleSet(version=1, rules=HealthRules())

    async def add_rules(self, ruleset: RuleSet) -> None:
        # The unique index on version makes two concurrent saves of the same version conflict.
        await self.db[HEALTH_RULES].insert_one(ruleset_doc(ruleset), session=self.session)

    async def add(self, record: HealthRecord) -> None:
        await self.db[HEALTH_SCORES].insert_one(
            {"_id": record.record_id, **asdict(record)}, session=self.session
        )

    async def history(self, account_id: str, *, since: datetime | None = None) -> list[HealthRecord]:
        query: Doc = {"account_id": account_id}
        if since is not None:
            query["scored_at"] = {"$gte": since}
        cursor = self.db[HEALTH_SCORES].find(query, session=self.session).sort("scored_at", DESCENDING)
        return [_HEALTH_RECORD.validate_python(_without_id(d)) for d in await cursor.limit(500).to_list()]

    async def add_risk_change(self, change: RiskChange) -> None:
        await self.db[CHURN_WARNINGS].insert_one(asdict(change), session=self.session)

    async def raised(self) -> list[tuple[str, datetime]]:
        cursor = self.db[CHURN_WARNINGS].find(
            {"at_risk": True}, {"account_id": 1, "at": 1}, session=self.session
        )
        return [(str(d["account_id"]), d["at"]) for d in await cursor.to_list()]


class MongoTickets(_Collection):
    async def add(self, ticket: Ticket) -> None:
        await self.db[TICKETS].insert_one(ticket_doc(ticket), session=self.session)

    async def of_account(self, account_id: str, *, since: datetime | None = None) -> list[Ticket]:
        query: Doc = {"account_id": account_id}
        if since is not None:
            query["opened_at"] = {"$gte": since}
        cursor = self.db[TICKETS].find(query, session=self.session).sort("opened_at", DESCENDING)
        return [ticket_from_doc(d) for d in await cursor.limit(1000).to_list()]

    async def get(self, ticket_id: str) -> Ticket | None:
        doc = await self.db[TICKETS].find_one({"_id": ticket_id}, session=self.session)
        return ticket_from_doc(doc) if doc else None

    async def save(self, ticket: Ticket) -> None:
        doc = ticket_doc(ticket)
        await self.db[TICKETS].update_one({"_id": doc.pop("_id")}, {"$set": doc}, session=self.session)


class MongoSurveys(_Collection):
    async def add(self, survey: Survey) -> None:
        await self.db[SURVEYS].insert_one(survey_doc(survey), session=self.session)

    async def get(self, survey_id: str) -> Survey | None:
        doc = await self.db[SURVEYS].find_one({"_id": survey_id}, session=self.session)
        return survey_from_doc(doc) if doc else None

    async def save_answer(self, survey: Survey) -> bool:
        result = await self.db[SURVEYS].replace_one(
            {"_id": survey.survey_id, "answered_at": None},
            asdict(survey),
            session=self.session,
        )
        return result.modified_count == 1

    async def of_account(self, account_id: str) -> list[Survey]:
        cursor = (
            self.db[SURVEYS]
            .find({"account_id": account_id}, session=self.session)
            .sort("sent_at", DESCENDING)
        )
        return [survey_from_doc(d) for d in await cursor.limit(1000).to_list()]

    async def for_ticket(self, ticket_id: str) -> Survey | None:
        doc = await self.db[SURVEYS].find_one({"ticket_id": ticket_id}, session=self.session)
        return survey_from_doc(doc) if doc else None

    async def last_sent(self, account_id: str, kind: SurveyKind) -> datetime | None:
        doc = await self.db[SURVEYS].find_one(
            {"account_id": account_id, "kind": kind.value},
            sort=[("sent_at", DESCENDING)],
            session=self.session,
        )
        return doc["sent_at"] if doc else None

    async def latest_answer(self, account_id: str, kind: SurveyKind) -> tuple[int, datetime] | None:
        doc = await self.db[SURVEYS].find_one(
            {"account_id": account_id, "kind": kind.value, "answered_at": {"$ne": None}},
            sort=[("answered_at", DESCENDING)],
            session=self.session,
        )
        return (int(doc["score"]), doc["answered_at"]) if doc else None


class MongoSettings(_Collection):
    async def roster(self) -> list[CsmEntry]:
        return (await self.roster_record()).csms

    async def roster_record(self) -> RosterRecord:
        doc = await self.db[SETTINGS].find_one({"_id": ROSTER_ID}, session=self.session)
        if doc is None:
            return RosterRecord()
        csms = [CsmEntry.model_validate(e) for e in doc.get("csms", [])]
        return RosterRecord(csms, doc.get("updated_at"), doc.get("updated_by"))

    async def save_roster(self, record: RosterRecord) -> None:
        doc = {"csms": [e.model_dump(mode="json") for e in record.csms], **_stamp(record)}
        await self.db[SETTINGS].replace_one({"_id": ROSTER_ID}, doc, upsert=True, session=self.session)

    async def take_turn(self) -> int:
        return await CSM_TURNS.take(self.db)

    async def desk_config(self) -> ConfigRecord:
        doc = await self.db[SETTINGS].find_one({"_id": CONFIG_ID}, session=self.session)
        if doc is None:
            return ConfigRecord(default_config())
        config = ServiceDeskConfig.model_validate(doc["config"])
        return ConfigRecord(config, doc.get("updated_at"), doc.get("updated_by"))

    async def save_desk_config(self, record: ConfigRecord) -> None:
        doc = {"config": record.config.model_dump(mode="json"), **_stamp(record)}
        await self.db[SETTINGS].replace_one({"_id": CONFIG_ID}, doc, upsert=True, session=self.session)

    async def config(self) -> SuccessConfig:
        return (await self.config_record()).config

    async def config_record(self) -> SuccessConfigRecord:
        doc = await self.db[SETTINGS].find_one({"_id": SUCCESS_CONFIG_ID}, session=self.session)
        if doc is None:
            return SuccessConfigRecord(SuccessConfig())
        config = SuccessConfig.model_validate(doc["config"])
        return SuccessConfigRecord(config, doc.get("updated_at"), doc.get("updated_by"))

    async def save_config(self, record: SuccessConfigRecord) -> None:
        doc = {"config": record.config.model_dump(mode="python"), **_stamp(record)}
        await self.db[SETTINGS].replace_one(
            {"_id": SUCCESS_CONFIG_ID}, doc, upsert=True, session=self.session
        )


def _stamp(record: RosterRecord | ConfigRecord | SuccessConfigRecord) -> Doc:
    return {"updated_at": record.updated_at, "updated_by": record.updated_by}


def review_doc(r: CommitmentReview) -> Doc:
    doc: Doc = {k: v for k, v in vars(r).items() if k not in ("value", "commitments", "decisions")}
    return {
        **doc,
        "_id": r.review_id,
        "status": r.status.value,
        "value": r.value.model_dump(mode="python") if r.value else None,
        "commitments": [c.model_dump(mode="python") for c in r.commitments],
        "decisions": [d.model_dump(mode="json") for d in r.decisions],
    }


def review_from_doc(d: Doc) -> CommitmentReview:
    fields = {k: v for k, v in d.items() if k in CommitmentReview.__dataclass_fields__}
    return CommitmentReview(
        **{
            **fields,
            "status": ReviewStatus(d["status"]),
            "value": Money.model_validate(d["value"]) if d.get("value") else None,
            "commitments": [Commitment.model_validate(c) for c in d.get("commitments", [])],
            "decisions": [CommitmentDecision.model_validate(x) for x in d.get("decisions", [])],
        }
    )


class MongoReviews(_Collection):
    async def get(self, review_id: str) -> CommitmentReview | None:
        doc = await self.db[REVIEWS].find_one({"_id": review_id}, session=self.session)
        return review_from_doc(doc) if doc else None

    async def add(self, review: CommitmentReview) -> None:
        await self.db[REVIEWS].insert_one(review_doc(review), session=self.session)

    async def save(self, review: CommitmentReview) -> None:
        doc = review_doc(review)
        await self.db[REVIEWS].update_one({"_id": doc.pop("_id")}, {"$set": doc}, session=self.session)

    async def of_deal(self, deal_id: str) -> list[CommitmentReview]:
        cursor = self.db[REVIEWS].find({"deal_id": deal_id}, session=self.session)
        return [
            review_from_doc(d) for d in await cursor.sort("requested_at", DESCENDING).limit(500).to_list()
        ]


async def list_reviews(
    db: AsyncDatabase[Doc], status: ReviewStatus | None, limit: int
) -> list[CommitmentReview]:
    """The API's listing: oldest received first (the queue order), of one status when given."""
    query: Doc = {"status": status.value} if status else {}
    cursor = db[REVIEWS].find(query).sort([("received_at", ASCENDING), ("_id", ASCENDING)]).limit(limit)
    return [review_from_doc(d) for d in await cursor.to_list()]


# --- the action items customer success raised -----------------------------------------------------


def raised_doc(item: RaisedItem) -> Doc:
    doc = asdict(item)
    return {"_id": doc.pop("item_id"), "item_id": item.item_id, **doc}


def raised_from_doc(doc: Doc) -> RaisedItem:
    fields = {k: v for k, v in doc.items() if k in RaisedItem.__dataclass_fields__}
    return RaisedItem(
        **{
            **fields,
            "item_id": str(doc["_id"]),
            "source": RaisedSource(**doc["source"]),
            "history": [RaisedStep(**step) for step in doc.get("history", [])],
        }
    )


class MongoRaisedItems(_Collection):
    async def get(self, item_id: str) -> RaisedItem | None:
        doc = await self.db[RAISED].find_one({"_id": item_id}, session=self.session)
        return raised_from_doc(doc) if doc else None

    async def add(self, item: RaisedItem) -> None:
        await self.db[RAISED].insert_one(raised_doc(item), session=self.session)

    async def save(self, item: RaisedItem) -> None:
        doc = raised_doc(item)
        await self.db[RAISED].update_one({"_id": doc.pop("_id")}, {"$set": doc}, session=self.session)


async def list_raised(
    db: AsyncDatabase[Doc],
    *,
    account_id: str | None = None,
    department: str | None = None,
    raised_by: str | None = None,
    limit: int = 100,
) -> list[RaisedItem]:
    """The API's listing of raised items, newest first."""
    query: Doc = {}
    if account_id is not None:
        query["account_id"] = account_id
    if raised_by is not None:
        query["raised_by"] = raised_by
    if department is not None:
        query["department"] = department
    cursor = db[RAISED].find(query).sort("raised_at", DESCENDING).limit(limit)
    return [raised_from_doc(d) for d in await cursor.to_list()]


class MongoSuccessUnit(MongoUnit):
    """One transaction's customer-success unit: the repositories over ``tx``; events to the outbox."""

    def __init__(self, tx: Tx) -> None:
        super().__init__(tx)
        self.accounts = MongoAccounts(tx.db, tx.session)
        self.renewals = MongoRenewals(tx.db, tx.session)
        self.settings = MongoSettings(tx.db, tx.session)
        self.checkins = MongoCheckIns(tx.db, tx.session)
        self.health = MongoHealth(tx.db, tx.session)
        self.tickets = MongoTickets(tx.db, tx.session)
        self.surveys = MongoSurveys(tx.db, tx.session)
        self.reviews = MongoReviews(tx.db, tx.session)
        self.raised = MongoRaisedItems(tx.db, tx.session)
        self.action_queue = MongoActionItems(tx.db, tx.session)


# -- retention (crm_platform.retention): the desk's record types and what expiry does to them ---

RETENTION_RULES = (
    # A resolved ticket: what the customer wrote, the notes about it and its custom values (a
    # text one may be about the person) go; its timings, SLA outcome and rating stay for the KPIs.
    Rule("ticket", TICKETS, "resolved_at", Action.ANONYMISE, eligible={"status": "resolved"},
         scrub={"request": ANONYMISED, "result": ANONYMISED, "progress": [], "custom": {}}),
)  # fmt: skip
