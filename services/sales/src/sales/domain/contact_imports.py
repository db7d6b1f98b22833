"""Importing contacts from a file (issue 9): sales' fields and defaults over the shared machinery,
and what one batch of rows does to the contacts.

The job, its checkpoint, the column mapping and the record reader are the platform's
(``crm_platform.imports.domain``, shared with marketing's lead imports). Here: the contact
fields a column may map to, the owner of the imported contacts, and :func:`import_rows`, the
creation rule of ``POST /contacts`` applied to a batch: one contact per email (trimmed,
lower-cased); a row whose email is known (stored, or earlier in the file) merges into that
contact like a capture (empty fields filled, filled ones kept) instead of the 409 a direct
creation gets, so a file can be imported again, or resumed, without doubling anyone. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from crm_contracts.events.sales import SalesContactCreatedV1
from crm_platform.imports.domain import ImportJob

from sales.domain.contact import IMPORT_SOURCE, Contact, email_key

CONTACT_FIELDS = ("email", "name", "phone", "role")
REQUIRED_FIELDS = ("email", "name")


@dataclass(frozen=True)
class ContactImportDefaults:
    """Whose book the imported contacts go to (a rep's own; a manager may name an active rep)."""

    owner: str


@dataclass(frozen=True)
class ContactImportJob(ImportJob[ContactImportDefaults]):
    """An import of contacts."""

    FIELDS = CONTACT_FIELDS
    REQUIRED = REQUIRED_FIELDS
    RECORD = "contact"


@dataclass(frozen=True)
class ContactRow:
    """One accepted row, validated by ``POST /contacts``' field rules."""

    email: str
    name: str
    phone: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class ContactBatch:
    new: tuple[Contact, ...]  # contacts the batch created (in their state after the batch)
    changed: tuple[Contact, ...]  # stored contacts the batch filled in
    events: tuple[SalesContactCreatedV1, ...]  # one per new contact
    merged: int  # rows that merged into a known contact


def import_rows(
    known: Mapping[str, Contact],
    rows: Sequence[ContactRow],
    job: ContactImportJob,
    new_id: Callable[[], str],
    now: datetime,
) -> ContactBatch:
    """The batch's rows applied one by one, in order (``known``: the stored contacts by email)."""
    contacts = dict(known)
    created: dict[str, Contact] = {}
    changed: dict[str, Contact] = {}
    events: list[SalesContactCreatedV1] = []
    merged = 0
    for row in rows:
        email = email_key(row.email)
        existing = contacts.get(email)
        if existing is None:
            contact, event = Contact.add(
                new_id(), email=email, name=row.name, owner=job.defaults.owner, source=IMPORT_SOURCE,
                by=job.created_by, now=now, phone=row.phone, role=row.role, import_id=job.id,
            )  # fmt: skip
            contacts[email] = created[email] = contact
            events.append(event)
            continue
        merged += 1
        filled = existing.merge(name=row.name, phone=row.phone, role=row.role, account_id=None, now=now)
        if filled and email not in created:  # a contact of this batch is inserted as it ends up
            changed[email] = existing
    return ContactBatch(tuple(created.values()), tuple(changed.values()), tuple(events), merged)
