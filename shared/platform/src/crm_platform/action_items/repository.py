"""Where a department keeps its action items: the interface, MongoDB, and a fake for unit tests."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from crm_platform.action_items.domain import CLOSED, ActionItem, Status, Step, View

Doc = dict[str, Any]
COLLECTION = "action_items"


class ActionItemRepository(Protocol):
    async def get(self, item_id: str) -> ActionItem | None: ...

    async def add(self, item: ActionItem) -> bool:
        """Store a new item; False (nothing written) if one with its id exists."""
        ...

    async def save(self, item: ActionItem) -> None: ...

    async def in_view(
        self, view: View, now: datetime, *, assignee: str | None = None, limit: int = 100
    ) -> list[ActionItem]:
        """The items in ``view``, most urgent (earliest due) first."""
        ...

    async def due_for_escalation(self, now: datetime, limit: int = 100) -> list[ActionItem]:
        """Open items overdue on their own clock at the real time ``now`` (``escalate_at``
        passed; an item stored before that field: its due date), not escalated yet."""
        ...


def to_doc(item: ActionItem) -> Doc:
    doc = asdict(item)
    doc["_id"] = item.item_id
    doc["status"] = str(item.status)
    doc["history"] = [asdict(s) for s in item.history]
    return doc


def from_doc(doc: Doc) -> ActionItem:
    data = {k: v for k, v in doc.items() if k != "_id"}
    data["status"] = Status(data["status"])
    data["history"] = tuple(Step(**s) for s in data.get("history", []))
    return ActionItem(**data)


def _view_query(view: View, now: datetime) -> Doc:
    closed = [str(s) for s in CLOSED]
    if view == View.CLOSED:
        return {"status": {"$in": closed}}
    query: Doc = {"status": {"$nin": closed}}
    if view == View.OVERDUE:
        query["due_at"] = {"$lt": now}
    elif view == View.ESCALATED:
        query["escalated_at"] = {"$ne": None}
    return query


async def ensure_indexes(db: AsyncDatabase[Doc]) -> None:
    await db[COLLECTION].create_index([("status", ASCENDING), ("due_at", ASCENDING)], name="by_status_due")
    await db[COLLECTION].create_index([("assignee", ASCENDING), ("due_at", ASCENDING)], name="by_assignee")
    await db[COLLECTION].create_index(
        [("escalated_at", ASCENDING), ("status", ASCENDING), ("escalate_at", ASCENDING)], name="by_escalation"
    )
    await db[COLLECTION].create_index(
        [("account_id", ASCENDING), ("raised_at", DESCENDING)], name="by_account"
    )
    if COLLECTION not in set(await db.list_collection_names()):
        await db.create_collection(COLLECTION)  # used inside transactions: must exist up front


class MongoActionItems:
    """The service's own ``action_items`` collection; pass the transaction's session to write."""

    def __init__(self, db: AsyncDatabase[Doc], session: AsyncClientSession | None = None) -> None:
        self.collection = db[COLLECTION]
        self.session = session

    async def get(self, item_id: str) -> ActionItem | None:
        doc = await self.collection.find_one({"_id": item_id}, session=self.session)
        return from_doc(doc) if doc else None

    async def add(self, item: ActionItem) -> bool:
        try:
            await self.collection.insert_one(to_doc(item), session=self.session)
        except DuplicateKeyError:
            return False
        return True

    async def save(self, item: ActionItem) -> None:
        await self.collection.replace_one({"_id": item.item_id}, to_doc(item), session=self.session)

    async def in_view(
        self, view: View, now: datetime, *, assignee: str | None = None, limit: int = 100
    ) -> list[ActionItem]:
        query = _view_query(view, now)
        if assignee is not None:
            query["assignee"] = assignee
        order = [("closed_at", DESCENDING)] if view == View.CLOSED else [("due_at", ASCENDING)]
        cursor = self.collection.find(query, session=self.session).sort(order).limit(limit)
        return [from_doc(d) for d in await cursor.to_list()]

    async def due_for_escalation(self, now: datetime, limit: int = 100) -> list[ActionItem]:
        query = {
            **_view_query(View.OPEN, now),
            "escalated_at": None,
            "$or": [{"escalate_at": {"$lt": now}}, {"escalate_at": None, "due_at": {"$lt": now}}],
        }
        cursor = self.collection.find(query, session=self.session).sort("due_at", ASCENDING).limit(limit)
        return [from_doc(d) for d in await cursor.to_list()]


class InMemoryActionItems:
    """The fake: the same behaviour over a dict, for unit tests without I/O."""

    def __init__(self) -> None:
        self.items: dict[str, ActionItem] = {}

    async def get(self, item_id: str) -> ActionItem | None:
        return self.items.get(item_id)

    async def add(self, item: ActionItem) -> bool:
        if item.item_id in self.items:
            return False
        self.items[item.item_id] = replace(item)
        return True

    async def save(self, item: ActionItem) -> None:
        self.items[item.item_id] = item

    async def in_view(
        self, view: View, now: datetime, *, assignee: str | None = None, limit: int = 100
    ) -> list[ActionItem]:
        found = [
            i
            for i in self.items.values()
            if i.in_view(view, now) and (assignee is None or i.assignee == assignee)
        ]
        if view == View.CLOSED:
            found.sort(key=lambda i: i.closed_at or i.raised_at, reverse=True)
        else:
            found.sort(key=lambda i: i.due_at)
        return found[:limit]

    async def due_for_escalation(self, now: datetime, limit: int = 100) -> list[ActionItem]:
        found = sorted(
            (i for i in self.items.values() if i.due_for_escalation(now)),
            key=lambda i: i.due_at,
        )
        return found[:limit]
