"""Keyset (cursor) pagination for every list: pages that never shift, served by an index.

A list is sorted by one field and the ``_id`` (the tie-break, same direction), or by one field,
a second field every document has (``then``: its ties) and the ``_id``; a page's cursor holds
the last item's values of them, and the next page asks for what comes strictly after them.
With an index on ``(filters..., field, [then,] _id)`` the server reads only the page, never the
skipped items (unlike ``skip``). The cursor is opaque to clients (base64 JSON); a time
travels as RFC 3339, money as a decimal string.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bson import Decimal128
from pymongo import ASCENDING, DESCENDING

Doc = dict[str, Any]


class BadCursor(ValueError):
    """Not a cursor this API returned (or one for another sort)."""


@dataclass(frozen=True)
class Sort:
    """``field``, then ``then`` (if any), then ``_id``, all ascending or all descending; ``name``
    is what clients send. ``then`` is a field every document has (not null): it orders the
    field's ties, e.g. by time, so that an index on the order enters new documents at the end of
    their tie rather than anywhere in it (a random ``_id``)."""

    name: str
    field: str
    descending: bool = True
    then: str | None = None

    @property
    def spec(self) -> list[tuple[str, int]]:
        direction = DESCENDING if self.descending else ASCENDING
        return [(f, direction) for f in (self.field, self.then, "_id") if f is not None]

    def after(self, cursor: str) -> Doc:
        """The query part selecting what comes after the cursor's item in this order."""
        value, ties = self._ties(cursor)
        op = "$lt" if self.descending else "$gt"
        # A missing value (null) sorts below every other: last going down, first going up.
        rest: list[Doc]
        if value is None:
            rest = [] if self.descending else [{self.field: {"$ne": None}}]
        else:
            rest = [{self.field: {op: value}}, *([{self.field: None}] if self.descending else [])]
        return {"$or": [{self.field: value, **tie} for tie in ties] + rest}

    def after_in_range(self, cursor: str) -> Doc:
        """What ``after`` selects, as a range on the field and a filter on its ties.

        The range bounds an index scan on ``(..., field, [then,] _id)`` even when the planner
        merges several (a filter ``$in`` before the field), which ``after``'s ``$or`` cannot. For a
        field every document has: a cursor on a missing value selects as ``after`` does."""
        value, ties = self._ties(cursor)  # checks the cursor's sort
        op = "$lt" if self.descending else "$gt"
        if value is None:
            return self.after(cursor)
        return {self.field: {op + "e": value}, "$or": [{self.field: {op: value}}, *ties]}

    def _ties(self, cursor: str) -> tuple[Any, list[Doc]]:
        """The cursor's value of the field, and what follows its item among the field's ties."""
        sort_name, value, last_id, then_value = _decode(cursor)
        if sort_name != self.name:
            raise BadCursor(f"this cursor is for sort={sort_name}, not sort={self.name}")
        op = "$lt" if self.descending else "$gt"
        if self.then is None:
            return value, [{"_id": {op: last_id}}]
        if then_value is None:
            raise BadCursor(f"this cursor is not one for sort={self.name}")
        return value, [{self.then: {op: then_value}}, {self.then: then_value, "_id": {op: last_id}}]

    def cursor_of(self, doc: Mapping[str, Any]) -> str:
        then = None if self.then is None else _dig(doc, self.then)
        return _encode(self.name, _dig(doc, self.field), doc["_id"], then)


def cursor_value(cursor: str) -> Any:
    """The order's value of the cursor's item (``BadCursor`` if it is not a cursor)."""
    return _decode(cursor)[1]


def sorts(*orders: Sort) -> dict[str, Sort]:
    """A list's orders by the name clients send (``?sort=``)."""
    return {order.name: order for order in orders}


def page(docs: Sequence[Doc], limit: int, sort: Sort) -> tuple[list[Doc], str | None]:
    """The page's documents (``docs`` was read with ``limit + 1``) and the next page's cursor."""
    items = list(docs[:limit])
    more = len(docs) > limit and bool(items)
    return items, sort.cursor_of(items[-1]) if more else None


def _dig(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _wire(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, Decimal128 | Decimal):
        return {"d": str(value)}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot page on a {type(value).__name__}")


def _unwire(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"}:
        when = datetime.fromisoformat(value["t"])
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when
    if isinstance(value, dict) and set(value) == {"d"}:
        return Decimal128(Decimal(value["d"]))
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError("unexpected value")


def _encode(sort_name: str, value: Any, doc_id: Any, then: Any = None) -> str:
    data = {"s": sort_name, "v": _wire(value), "id": doc_id}
    if then is not None:
        data["w"] = _wire(then)
    raw = json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, Any, str, Any]:
    """The cursor's sort name, field value, ``_id`` and ``then`` value (None: a cursor without)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        sort_name, value, doc_id = data["s"], _unwire(data["v"]), data["id"]
        then = _unwire(data.get("w"))
    except (binascii.Error, ValueError, KeyError, TypeError, InvalidOperation, AttributeError) as exc:
        raise BadCursor("not a cursor returned by this API") from exc
    if not isinstance(sort_name, str) or not isinstance(doc_id, str):
        raise BadCursor("not a cursor returned by this API")
    return sort_name, value, doc_id, then


def text_search(q: str) -> Doc:
    """A ``$text`` query where every word must match (each quoted: MongoDB ANDs phrases)."""
    words = [w.replace('"', "") for w in q.split()]
    return {"$text": {"$search": " ".join(f'"{w}"' for w in words if w), "$caseSensitive": False}}


def index_specs(
    name: str, prefixes: Sequence[Sequence[str]], orders: Iterable[Sort]
) -> list[tuple[list[tuple[str, int]], str]]:
    """The indexes a list needs: one per (equality filter prefix, order field [and its ``then``]),
    then ``_id``.

    Each is ``(keys, index name)`` for ``create_index``; descending keys serve both directions
    of an order (MongoDB walks an index either way)."""
    specs: list[tuple[list[tuple[str, int]], str]] = []
    fields = sorted({tuple(f for f in (o.field, o.then) if f is not None) for o in orders})
    for prefix in prefixes:
        for order in fields:
            keys = [*((k, ASCENDING) for k in prefix), *((f, DESCENDING) for f in order), ("_id", DESCENDING)]
            specs.append((keys, "_".join([name, *prefix, *order]).replace(".", "_")))
    return specs


def keyset(flt: Doc, sort: Sort, cursor: str | None) -> Doc:
    """``flt`` narrowed to what comes after ``cursor`` in ``sort``'s order (no cursor: ``flt``)."""
    return flt if cursor is None else {"$and": [flt, sort.after(cursor)]}


def search_words(q: str | None) -> str | None:
    """A list's ``?q=`` as searched: None when absent or blank."""
    return (q.strip() or None) if q else None
