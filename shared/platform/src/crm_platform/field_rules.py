"""Field-level rules (issue 9): who sees personal data pseudonymised, and where it is done.

Analysts and executives read records for figures, not to work with the people in them: a
user whose roles are all among ``analyst`` and ``executive`` (:func:`applies_to`) gets every
person's e-mail, phone and name replaced by its pseudonym (:mod:`crm_platform.pseudonym`: the
install's keyed hash, the same in every service and over time, so counts, groupings and joins
still work) and free text written about a person withheld. A user who also holds an
operational role sees what that role sees.

Applied once for every service, never per route:

- JSON answers: :class:`PseudonymEdge`, the ASGI middleware ``create_app`` installs, rewrites
  the body of such a user's JSON answers (any depth: lists, nested contacts, audit entries'
  ``changes``), so every read route is covered, routes an administrator opens to these roles
  later included. Everyone else's answers pass through untouched and unbuffered.
- CSV exports: ``crm_platform.csv_stream.CsvResponse`` pseudonymises row by row as the export
  streams, by column name (the same fields).

Which fields: :data:`PERSON_FIELDS` by key or column name; ``name`` only inside a record that
also has an ``email`` or ``phone`` (a person, not an account, stage or campaign); in an audit
entry's changes, ``name`` of the record types in :data:`PERSON_RECORDS`. Custom fields
(:mod:`crm_platform.custom_fields`): a ``text`` field may hold personal data, so in a record's
``custom`` object (and an export's ``custom.<key>`` columns) every text value is withheld
unless the department defines that key only as a non-text field (choice, date; numbers and
money are never text): decided from the definitions (``app.state.custom_fields``), failing
closed (withheld) when they cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from crm_platform.errors import Forbidden
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, Kind, pseudonym
from crm_platform.roles import Role


@dataclass
class Pseudonymiser:
    """:func:`crm_platform.pseudonym.pseudonym` under one key, remembering recent values
    (a list repeats people; an HMAC per cell would be most of the cost)."""

    key: str
    _memo: dict[tuple[str, str], str] = field(default_factory=dict)

    def pseudonym(self, kind: Kind, value: str) -> str:
        found = self._memo.get((kind, value))
        if found is None:
            if len(self._memo) >= 16384:
                self._memo.clear()
            found = self._memo[(kind, value)] = pseudonym(kind, value, self.key)
        return found


@lru_cache(maxsize=4)
def pseudonymiser(key: str) -> Pseudonymiser:
    """One :class:`Pseudonymiser` per key in the process."""
    return Pseudonymiser(key)


#: Roles that read records for figures, not to work with the people in them.
PSEUDONYMISED_ROLES = frozenset({Role.ANALYST.value, Role.EXECUTIVE.value})
#: JSON keys / CSV columns holding a person's identifiers, and the kind of pseudonym each gets.
PERSON_FIELDS: Mapping[str, str] = {
    "email": "email",
    "contact_email": "email",
    "phone": "phone",
    "contact_phone": "phone",
    "contact_name": "name",
    "first_name": "name",
    "last_name": "name",
    "full_name": "name",
}
#: ``name`` is a person's only beside one of these (else an account, a stage, a campaign...).
PERSON_MARKERS = ("email", "phone")
#: Free text written about a person (an account's check-in or onboarding notes, a ticket's request
#: and result, an import's raw row): no pseudonym can keep its meaning, so it is withheld. A
#: single ``note`` is shown: most are about the work (a scoring-rule change's reason).
FREE_TEXT_FIELDS = frozenset({"notes", "request", "result", "raw"})
WITHHELD = "[withheld]"
#: Audit record types (collections) whose ``name`` field is a person's: in an audit entry's
#: ``changes`` (``[{field, before, after}]``) the field name says what the values are.
PERSON_RECORDS = frozenset({"leads", "contacts", "inbox", "users"})


def applies_to(roles: Iterable[str]) -> bool:
    """True for a user whose roles are all among analyst and executive (someone who also holds
    an operational role sees what that role sees)."""
    held = frozenset(roles)
    return bool(held) and held <= PSEUDONYMISED_ROLES


def refuse_personal_search(roles: Iterable[str], given: Mapping[str, object]) -> None:
    """A pseudonymised user (:func:`applies_to`) may not search, filter or sort a list by what
    they see pseudonymised or withheld: matched against the real values, a search for an
    e-mail they already know would tell them that this person is there (and a keyset
    cursor ordered by name would carry a real name). ``given``: the list's parameters that
    reach personal data (``{"query.q": q, ...}``); any given one is a 403 naming it. Other
    users, and the parameters left out (None, empty), pass (docs/governance.md, section 2)."""
    if not applies_to(roles):
        return
    for param, value in given.items():
        if value is not None and value != "" and value != [] and value is not False:
            raise Forbidden(
                f"{param}: analysts and executives see people's names, e-mails, phones and free text "
                "pseudonymised or withheld, so a list cannot be searched, filtered or sorted by them "
                "for these roles (a real value would tell whether that person is there)",
                field=param,
                reason="pseudonymised_search",
            )


def _pseudonym(p: Pseudonymiser, kind: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return p.pseudonym(kind, value)  # type: ignore[arg-type]  # kind comes from PERSON_FIELDS


NOTHING: frozenset[str] = frozenset()
CUSTOM = "custom"


def _field(p: Pseudonymiser, key: str, item: Any, person: bool, shown: frozenset[str] = NOTHING) -> Any:
    """One field's value as a pseudonymised user sees it (``person``: its record is a person;
    ``shown``: the custom field keys whose string values are not text, see the module doc)."""
    kind = PERSON_FIELDS.get(key) or ("name" if key == "name" and person else None)
    if kind is not None:
        return [_pseudonym(p, kind, v) for v in item] if isinstance(item, list) else _pseudonym(p, kind, item)
    if key in FREE_TEXT_FIELDS and isinstance(item, str) and item:
        return WITHHELD
    if key == CUSTOM and isinstance(item, dict):
        return {k: _custom_value(k, v, shown, p) for k, v in item.items()}
    if (
        key.startswith(CUSTOM + ".")
        and isinstance(item, str)
        and item
        and key[len(CUSTOM) + 1 :] not in shown
    ):
        return WITHHELD  # an audit change of one custom field
    return pseudonymise_json(item, p, shown)


def _custom_value(key: str, value: Any, shown: frozenset[str], p: Pseudonymiser) -> Any:
    if isinstance(value, str) and value and key not in shown:
        return WITHHELD
    return pseudonymise_json(value, p, shown)


def pseudonymise_changes(
    changes: Any, record_type: str, p: Pseudonymiser, shown: frozenset[str] = NOTHING
) -> Any:
    """An audit entry's ``[{field, before, after}]``: the field name says what the values are."""
    if not isinstance(changes, list):
        return pseudonymise_json(changes, p, shown)
    person = record_type in PERSON_RECORDS
    out = []
    for change in changes:
        if isinstance(change, dict) and isinstance(change.get("field"), str):
            name = change["field"]
            values = {
                k: _field(p, name, change[k], person, shown) for k in ("before", "after") if k in change
            }
            change = {**change, **values}
        out.append(change)
    return out


def pseudonymise_json(value: Any, p: Pseudonymiser, shown: frozenset[str] = NOTHING) -> Any:
    """``value`` (decoded JSON) with every person's identifiers pseudonymised and free text
    withheld, at any depth (lists, nested records, audit entries' changes); ``shown``: the
    custom field keys whose string values are not text (the others are withheld)."""
    if isinstance(value, list):
        return [pseudonymise_json(v, p, shown) for v in value]
    if not isinstance(value, dict):
        return value
    person = any(k in value for k in PERSON_MARKERS)
    record = value.get("record")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == "changes" and isinstance(record, dict):  # an audit entry
            out[key] = pseudonymise_changes(item, str(record.get("type", "")), p, shown)
        else:
            out[key] = _field(p, key, item, person, shown)
    return out


async def custom_shown(scope: Mapping[str, Any]) -> frozenset[str]:
    """The custom field keys the request's department defines only as non-text (their string
    values are choices and dates): read from ``app.state.custom_fields`` (its cache); none when
    the department keeps no custom fields or they cannot be read (fail closed)."""
    registry = getattr(getattr(scope.get("app"), "state", None), "custom_fields", None)
    if registry is None:
        return NOTHING
    try:
        shown: frozenset[str] = await registry.non_text_keys()
    except Exception:  # noqa: BLE001 - the database may be down: withhold rather than fail
        return NOTHING
    return shown


Row = Sequence[Any]


def row_transform(
    header: Sequence[str], p: Pseudonymiser, shown: frozenset[str] = NOTHING
) -> Callable[[Row], Row] | None:
    """What to do to each CSV row under ``header`` (by column name, the same fields as JSON;
    a ``custom.<key>`` column's text withheld unless ``key`` is in ``shown``), or None when no
    column holds personal data."""
    person = any(h in PERSON_MARKERS for h in header)
    plan: list[tuple[int, str | None]] = []
    for i, name in enumerate(header):
        kind = PERSON_FIELDS.get(name) or ("name" if name == "name" and person else None)
        custom_text = name.startswith(CUSTOM + ".") and name[len(CUSTOM) + 1 :] not in shown
        if kind is not None or name in FREE_TEXT_FIELDS or custom_text:
            plan.append((i, kind))
    # The audit log's export: ``changes`` is the entry's changes as JSON text.
    audit = (
        (header.index("changes"), header.index("record_type"))
        if {"changes", "record_type"} <= set(header)
        else None
    )
    if not plan and audit is None:
        return None

    def transform(row: Row) -> Row:
        cells = list(row)
        for i, kind in plan:
            if i < len(cells):
                cell = cells[i]
                if kind is None:
                    cells[i] = WITHHELD if isinstance(cell, str) and cell else cell
                else:
                    cells[i] = _pseudonym(p, kind, cell)
        if audit is not None and isinstance(cells[audit[0]], str) and cells[audit[0]]:
            changes = pseudonymise_changes(json.loads(cells[audit[0]]), str(cells[audit[1]]), p, shown)
            cells[audit[0]] = json.dumps(changes, sort_keys=True)
        return cells

    return transform


async def transformed_rows(rows: AsyncIterator[Row], transform: Callable[[Row], Row]) -> AsyncIterator[Row]:
    async for row in rows:
        yield transform(row)


def for_scope(scope: Mapping[str, Any]) -> Pseudonymiser | None:
    """The pseudonyms a request's answer must use, or None: the request's verified principal
    (crm_platform.auth caches it in the request state) holds only pseudonymised roles."""
    state = scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    if principal is None or not applies_to(principal.roles):
        return None
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    key = getattr(settings, "pseudonym_key", None)
    return pseudonymiser(key.get_secret_value() if key is not None else DEV_PSEUDONYM_KEY)


# -- the edge: every JSON answer of a service ---------------------------------------------

Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
AsgiApp = Callable[[dict[str, Any], Receive, Send], Any]


class PseudonymEdge:
    """ASGI middleware (create_app installs it): the JSON answer of a request whose user sees
    pseudonyms is decoded, pseudonymised (:func:`pseudonymise_json`) and encoded again.

    Fast path: every other answer (most users, every public route, non-JSON bodies, the
    streamed CSV exports, which ``csv_stream`` pseudonymises row by row) passes through
    untouched and unbuffered; the decision is taken once, when the answer starts, because the
    principal is known only after the route's dependencies ran. ``applies(path)`` leaves out
    paths whose answers are not this service's records (the gateway's forwarding: the
    department it forwards to has pseudonymised them already).
    """

    def __init__(self, app: AsgiApp, applies: Callable[[str], bool] = lambda _: True) -> None:
        self.app = app
        self.applies = applies

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # where auth caches the principal (the same dict)
        held: list[Message] = []
        chosen: Pseudonymiser | None = None
        shown = NOTHING
        passing = False

        async def watch(message: Message) -> None:
            nonlocal chosen, passing, shown
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                chosen = for_scope(scope) if _is_json(message) else None
                if chosen is None:
                    passing = True
                    await send(message)
                    return
                shown = await custom_shown(scope)
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                assert chosen is not None
                for out in _rewritten(held, chosen, shown):
                    await send(out)

        await self.app(scope, receive, watch)


def _is_json(start: Message) -> bool:
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _rewritten(held: list[Message], p: Pseudonymiser, shown: frozenset[str] = NOTHING) -> list[Message]:
    start, bodies = held[0], held[1:]
    raw = b"".join(m.get("body", b"") for m in bodies)
    try:
        body = json.dumps(
            pseudonymise_json(json.loads(raw), p, shown),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode()
    except ValueError:  # labelled JSON but not JSON: fail closed, never the real data
        start = {**start, "status": 500}
        body = b'{"error":"internal_error","message":"the answer could not be pseudonymised"}'
    headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return [{**start, "headers": headers}, {"type": "http.response.body", "body": body, "more_body": False}]
