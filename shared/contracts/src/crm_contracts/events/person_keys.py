"""Per-person data keys (issue 9, crypto-shredding; ``crm_platform.shredding``).

The department that first holds a person (marketing at capture, sales for a deal's contacts)
makes a random AES-256 key for them, seals their personal fields in its events with it and
publishes the key on its own compacted key topic (key = person id), through its outbox in the
transaction that made it. The departments that must read those events keep a copy. Erasure
destroys the key: the owner publishes ``*.person_key_shredded`` under the same key (the latest
record per person, which compaction keeps: no key material), every holder deletes its copy,
and the sealed fields left on the log are unreadable.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp

# Base64 of a 32-byte key.
KEY_LENGTH = 44
# A keyed hash (crm_platform.pseudonym.email_hash): SHA-256 as 64 lower-case hex digits.
_HEX_DIGEST = r"^[0-9a-f]{64}$"


class _PersonKeyIssued(Event):
    person_id: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=KEY_LENGTH, max_length=KEY_LENGTH, description="Base64 AES-256 key")
    issued_at: Timestamp

    def partition_key(self) -> str:
        return self.person_id


def _email_hash() -> Any:
    """v2 of a key record: the keyed hash of the person's e-mail, which the owner looked the key
    up by. A holder stores it with its copy, so that an erasure request (a hash) finds the copy
    at once without the holder writing it into the copy when it first opens an event sealed with
    the key (one update per handoff: docs/performance.md, "Sixteenth session, drain"). An erasure
    request carries the same hash on the log: it names a person without being their data."""
    return Field(
        default=None,
        pattern=_HEX_DIGEST,
        description="HMAC-SHA256 (hex) of the person's normalised e-mail (the install's keyed hash); "
        "null: the holder learns it when it opens an event sealed with the key",
    )


class _PersonKeyShredded(Event):
    person_id: str = Field(min_length=1, max_length=100)
    shredded_at: Timestamp

    def partition_key(self) -> str:
        return self.person_id


class LeadPersonKeyIssuedV1(_PersonKeyIssued):
    """Marketing's data key for one person (a lead): read by sales, to open ``lead.qualified`` v2."""

    event_type: ClassVar[str] = "lead.person_key_issued"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_PERSON_KEYS


class LeadPersonKeyIssuedV2(LeadPersonKeyIssuedV1):
    """v1 with the person's e-mail hash: sales keeps it with its copy of the key."""

    version: ClassVar[int] = 2

    email_hash: str | None = _email_hash()


class LeadPersonKeyShreddedV1(_PersonKeyShredded):
    """Marketing destroyed the person's key (erasure): holders delete their copy."""

    event_type: ClassVar[str] = "lead.person_key_shredded"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_PERSON_KEYS


class SalesPersonKeyIssuedV1(_PersonKeyIssued):
    """Sales' data key for one person (a deal's contact): read by customer success, to open
    ``deal.won`` v3."""

    event_type: ClassVar[str] = "sales.person_key_issued"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_PERSON_KEYS


class SalesPersonKeyIssuedV2(SalesPersonKeyIssuedV1):
    """v1 with the person's e-mail hash: customer success keeps it with its copy of the key."""

    version: ClassVar[int] = 2

    email_hash: str | None = _email_hash()


class SalesPersonKeyShreddedV1(_PersonKeyShredded):
    """Sales destroyed the person's key (erasure): holders delete their copy."""

    event_type: ClassVar[str] = "sales.person_key_shredded"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_PERSON_KEYS
