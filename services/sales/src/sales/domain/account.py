"""Sales' own accounts: customer companies sales opens itself (a referral, outbound work).

Marketing's handoff brings a company name on a lead; an account opened here is sales' own
record of a company it works without one. Opportunities for it are created directly
(``Opportunity.direct``) and, once won, handed to customer success like every deal. One
account per name (trimmed and case-folded): a second one is a conflict naming the first.
No I/O: the time, the id and the acting user come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from crm_contracts.events.sales import SalesAccountCreatedV1


class DirectSource(StrEnum):
    """How a record sales creates itself came in."""

    REFERRAL = "referral"
    OUTBOUND = "outbound"
    EVENT = "event"
    PARTNER = "partner"
    OTHER = "other"


def name_key(name: str) -> str:
    """An account's identity: its name trimmed, inner spaces collapsed and case-folded."""
    return " ".join(name.split()).casefold()


@dataclass
class Account:
    id: str
    name: str
    owner: str
    source: DirectSource
    created_by: str
    created_at: datetime
    updated_at: datetime
    industry: str | None = None
    website: str | None = None

    @property
    def key(self) -> str:
        return name_key(self.name)

    @classmethod
    def open(
        cls,
        account_id: str,
        name: str,
        *,
        owner: str,
        source: DirectSource,
        by: str,
        now: datetime,
        industry: str | None = None,
        website: str | None = None,
    ) -> tuple[Account, SalesAccountCreatedV1]:
        """A new account in ``owner``'s book, and the event analytics learns of it by."""
        account = cls(account_id, " ".join(name.split()), owner, source, by, now, now, industry, website)
        event = SalesAccountCreatedV1(
            account_id=account_id, name=account.name, owner=owner, source=source.value, industry=industry
        )
        return account, event
