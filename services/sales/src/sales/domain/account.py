"""Sales' own accounts: customer companies sales opens itself (a referral, outbound work).

Marketing's handoff brings a company name on a lead; an account opened here is sales' own
record of a company it works without one. Opportunities for it are created directly
(``Opportunity.direct``) and, once won, handed to customer success like every deal. One
account per name (trimmed and case-folded): a second one is a conflict naming the first.
No I/O: the time, the id and the acting user come in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from crm_contracts.events.sales import SalesAccountCreatedV2
from crm_platform.custom_fields import FieldSet, RecordType, StoredValue, to_extensions

NO_CUSTOM_FIELDS = FieldSet(RecordType.ACCOUNT)


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
    custom: Mapping[str, StoredValue] = field(default_factory=dict)  # checked by FieldSet.create

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
        custom: Mapping[str, StoredValue] | None = None,
        fields: FieldSet = NO_CUSTOM_FIELDS,
    ) -> tuple[Account, SalesAccountCreatedV2]:
        """A new account in ``owner``'s book, and the event analytics learns of it by (its custom
        fields that ``fields`` defines in the extension map, text left out)."""
        values = dict(custom or {})
        account = cls(
            account_id, " ".join(name.split()), owner, source, by, now, now, industry, website, values
        )
        event = SalesAccountCreatedV2(
            account_id=account_id,
            name=account.name,
            owner=owner,
            source=source.value,
            industry=industry,
            custom=to_extensions(fields, values) if values else {},
        )
        return account, event
