"""The service desk's own collections, as repository functions.

Inside a use case, build the repository from the transaction (``Repo.of(tx)``) so
every read and write goes through ``tx.session``; plain reads for the API use
``Repo(db)`` without a session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crm_platform.counters import RoundRobinCounter
from crm_platform.mongo import Tx
from crm_platform.uow import MongoUnit
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from service_desk.domain.accounts import Account, AccountStatus, OnboardingStatus
from service_desk.domain.config import ServiceDeskConfig, default_config
from service_desk.domain.renewals import RenewalRecord
from service_desk.domain.roster import CsmEntry
from service_desk.domain.success_config import SuccessConfig
from service_desk.domain.tickets import Ticket, TicketStatus

Doc = dict[str, Any]

ACCOUNTS = "accounts"
TICKETS = "tickets"
SETTINGS = "settings"  # the roster and the config, one document each
COUNTERS = "counters"
RENEWALS = "renewals"

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
    # Collections used inside transactions exist up front.
    existing = set(await db.list_collection_names())
    for name in (SETTINGS, COUNTERS, RENEWALS):
        if name not in existing:
            await db.create_collection(name)


def _without_id(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "_id"}


class Repo:
    def __init__(self, db: AsyncDatabase[Doc], session: AsyncClientSession | None = None) -> None:
        self.db = db
        self.session = session

    @classmethod
    def of(cls, tx: Tx) -> Repo:
        return cls(tx.db, tx.session)

    # --- roster and round robin -------------------------------------------------------------

    async def roster(self) -> tuple[list[CsmEntry], Doc]:
        doc = await self.db[SETTINGS].find_one({"_id": ROSTER_ID}, session=self.session)
        if doc is None:
            return [], {}
        return [CsmEntry.model_validate(e) for e in doc.get("csms", [])], doc

    async def save_roster(self, entries: list[CsmEntry], meta: Doc) -> None:
        await self.db[SETTINGS].replace_one(
            {"_id": ROSTER_ID},
            {"csms": [e.model_dump(mode="json") for e in entries], **meta},
            upsert=True,
            session=self.session,
        )

    async def take_turn(self) -> int:
        """The next round-robin turn (``crm_platform.counters``: taken outside the transaction,
        so concurrent assignments never conflict on it; an aborted one skips a turn)."""
        return await CSM_TURNS.take(self.db)

    # --- config -----------------------------------------------------------------------------

    async def config(self) -> tuple[ServiceDeskConfig, Doc]:
        doc = await self.db[SETTINGS].find_one({"_id": CONFIG_ID}, session=self.session)
        if doc is None:
            return default_config(), {}
        return ServiceDeskConfig.model_validate(doc["config"]), doc

    async def save_config(self, config: ServiceDeskConfig, meta: Doc) -> None:
        await self.db[SETTINGS].replace_one(
            {"_id": CONFIG_ID},
            {"config": config.model_dump(mode="json"), **meta},
            upsert=True,
            session=self.session,
        )

    # --- accounts ---------------------------------------------------------------------------

    async def account(self, account_id: str) -> Account | None:
        doc = await self.db[ACCOUNTS].find_one({"_id": account_id}, session=self.session)
        return Account.model_validate(_without_id(doc)) if doc else None

    async def account_by_deal(self, deal_id: str) -> Account | None:
        doc = await self.db[ACCOUNTS].find_one({"deal_id": deal_id}, session=self.session)
        return Account.model_validate(_without_id(doc)) if doc else None

    async def insert_account(self, account: Account) -> None:
        await self.db[ACCOUNTS].insert_one(
            {"_id": account.account_id, **account.model_dump(mode="python")}, session=self.session
        )

    async def save_account(self, account: Account) -> None:
        await self.db[ACCOUNTS].replace_one(
            {"_id": account.account_id}, account.model_dump(mode="python"), session=self.session
        )

    async def accounts(
        self,
        *,
        csm: str | None = None,
        onboarding: OnboardingStatus | None = None,
        deal_id: str | None = None,
        limit: int = 100,
    ) -> list[Account]:
        query: Doc = {}
        if csm is not None:  # the accounts a CSM manages, as CSM or as account manager
            query["$or"] = [{"csm": csm}, {"account_manager": csm}]
        if deal_id is not None:
            query["deal_id"] = deal_id
        if onboarding is not None:
            query["onboarding.status"] = onboarding.value
        cursor = self.db[ACCOUNTS].find(query, session=self.session).sort("created_at", DESCENDING)
        return [Account.model_validate(_without_id(d)) for d in await cursor.limit(limit).to_list()]

    async def account_ids_of(self, csm: str) -> list[str]:
        cursor = self.db[ACCOUNTS].find(
            {"$or": [{"csm": csm}, {"account_manager": csm}]}, {"_id": 1}, session=self.session
        )
        return [str(d["_id"]) for d in await cursor.to_list()]

    # --- tickets ----------------------------------------------------------------------------

    async def ticket(self, ticket_id: str) -> Ticket | None:
        doc = await self.db[TICKETS].find_one({"_id": ticket_id}, session=self.session)
        return Ticket.model_validate(_without_id(doc)) if doc else None

    async def insert_ticket(self, ticket: Ticket) -> None:
        await self.db[TICKETS].insert_one(
            {"_id": ticket.ticket_id, **ticket.model_dump(mode="python")}, session=self.session
        )

    async def save_ticket(self, ticket: Ticket) -> None:
        await self.db[TICKETS].replace_one(
            {"_id": ticket.ticket_id}, ticket.model_dump(mode="python"), session=self.session
        )

    async def tickets(
        self,
        *,
        account_id: str | None = None,
        status: TicketStatus | None = None,
        visible_to: tuple[str, list[str]] | None = None,
        limit: int = 100,
    ) -> list[Ticket]:
        """Tickets, newest first; ``visible_to`` = (username, their account ids) limits to a CSM's book."""
        query: Doc = {}
        if account_id is not None:
            query["account_id"] = account_id
        if status is not None:
            query["status"] = status.value
        if visible_to is not None:
            username, account_ids = visible_to
            query["$or"] = [{"assignee": username}, {"account_id": {"$in": account_ids}}]
        cursor = self.db[TICKETS].find(query, session=self.session).sort("opened_at", DESCENDING)
        return [Ticket.model_validate(_without_id(d)) for d in await cursor.limit(limit).to_list()]

    async def success_config(self) -> tuple[SuccessConfig, Doc]:
        return await MongoSettings(self.db, self.session).config()


# --- customer success: the Mongo implementations of repository.py's Protocols ------------------


class _Collection:
    def __init__(self, db: AsyncDatabase[Doc], session: AsyncClientSession | None = None) -> None:
        self.db = db
        self.session = session


class MongoAccounts(_Collection):
    async def get(self, account_id: str) -> Account | None:
        return await Repo(self.db, self.session).account(account_id)

    async def save(self, account: Account) -> None:
        await Repo(self.db, self.session).save_account(account)

    async def renewing(self, *, until: datetime, member: str | None) -> list[Account]:
        query: Doc = {"status": {"$ne": AccountStatus.CHURNED.value}, "term.renewal_date": {"$lte": until}}
        if member is not None:
            query["$or"] = [{"csm": member}, {"account_manager": member}]
        cursor = self.db[ACCOUNTS].find(query, session=self.session).sort("term.renewal_date", ASCENDING)
        return [Account.model_validate(_without_id(d)) for d in await cursor.limit(5000).to_list()]


class MongoRenewals(_Collection):
    async def add(self, record: RenewalRecord) -> None:
        await self.db[RENEWALS].insert_one(
            {"_id": record.renewal_id, **record.model_dump(mode="python")}, session=self.session
        )

    async def of_account(self, account_id: str) -> list[RenewalRecord]:
        cursor = self.db[RENEWALS].find({"account_id": account_id}, session=self.session)
        docs = await cursor.sort("recorded_at", DESCENDING).limit(1000).to_list()
        return [RenewalRecord.model_validate(_without_id(d)) for d in docs]


class MongoSettings(_Collection):
    async def roster(self) -> list[CsmEntry]:
        entries, _ = await Repo(self.db, self.session).roster()
        return entries

    async def config(self) -> tuple[SuccessConfig, Doc]:
        doc = await self.db[SETTINGS].find_one({"_id": SUCCESS_CONFIG_ID}, session=self.session)
        if doc is None:
            return SuccessConfig(), {}
        return SuccessConfig.model_validate(doc["config"]), doc

    async def save_config(self, config: SuccessConfig, meta: Doc) -> None:
        await self.db[SETTINGS].replace_one(
            {"_id": SUCCESS_CONFIG_ID},
            {"config": config.model_dump(mode="python"), **meta},
            upsert=True,
            session=self.session,
        )


class MongoSuccessUnit(MongoUnit):
    """One transaction's customer-success unit: the repositories over ``tx``; events to the outbox."""

    def __init__(self, tx: Tx) -> None:
        super().__init__(tx)
        self.accounts = MongoAccounts(tx.db, tx.session)
        self.renewals = MongoRenewals(tx.db, tx.session)
        self.settings = MongoSettings(tx.db, tx.session)
