"""Sales' own contacts: the people sales works with at its accounts, created directly or imported.

Sales owns contacts (marketing owns leads). A contact's identity is its email, trimmed and
lower-cased, the same rule as marketing's capture (``leads.domain.leads.normalize_email``):
one contact per email. Created directly, a second one with a known email is a conflict
naming the first; imported, a known email merges like a capture (empty fields are filled,
filled ones kept). The ``sales.contact_created`` event carries ids only: a person's name,
email and phone stay in sales' database. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from crm_contracts.events.sales import SalesContactCreatedV1

IMPORT_SOURCE = "import"


def email_key(raw: str) -> str:
    """A contact's identity: the email trimmed and lower-cased (as marketing's capture does)."""
    return raw.strip().lower()


@dataclass
class Contact:
    id: str
    email: str  # as email_key gives it
    name: str
    owner: str
    source: str  # a DirectSource value, or "import"
    created_by: str
    created_at: datetime
    updated_at: datetime
    account_id: str | None = None
    phone: str | None = None
    role: str | None = None
    import_id: str | None = None

    @classmethod
    def add(
        cls,
        contact_id: str,
        *,
        email: str,
        name: str,
        owner: str,
        source: str,
        by: str,
        now: datetime,
        account_id: str | None = None,
        phone: str | None = None,
        role: str | None = None,
        import_id: str | None = None,
    ) -> tuple[Contact, SalesContactCreatedV1]:
        """A new contact in ``owner``'s book, and the event (ids only) analytics learns of it by."""
        contact = cls(
            contact_id, email_key(email), name.strip(), owner, source, by, now, now,
            account_id, phone, role, import_id,
        )  # fmt: skip
        event = SalesContactCreatedV1(
            contact_id=contact_id, account_id=account_id, owner=owner, source=source
        )
        return contact, event

    def merge(
        self, *, name: str | None, phone: str | None, role: str | None, account_id: str | None, now: datetime
    ) -> bool:
        """The same person imported again: empty fields are filled, filled ones kept (the
        capture's rule). Whether anything changed."""
        before = replace(self)
        if not self.name and name:
            self.name = name.strip()
        self.phone = self.phone or phone
        self.role = self.role or role
        self.account_id = self.account_id or account_id
        changed = self != before
        if changed:
            self.updated_at = now
        return changed

    def as_deal_contact(self) -> dict[str, str | None]:
        """The contact as an opportunity (and the deal.won handoff) carries it."""
        return {"name": self.name, "email": self.email, "phone": self.phone, "role": self.role}
