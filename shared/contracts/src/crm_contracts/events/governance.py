"""Governance events (issue 9): the permission policy and erasure requests the gateway emits for
every department, and each department's confirmation of an erasure."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp

# The one key every version of the policy is published under: on a compacted topic the
# latest policy is what a new consumer (a new department, a rebuilt database) reads first.
POLICY_KEY = "role-permissions"


class RoleGrant(BaseModel):
    """The permissions one role holds (permission names from the platform's catalogue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(min_length=1, max_length=64)
    permissions: list[str] = Field(max_length=500, description="Permission names, e.g. 'leads.leads.read'")


class PermissionsChangedV1(Event):
    """The whole role -> permission policy after an administrator changed it.

    A full snapshot, never a delta, numbered by ``version`` (1, 2, ... per change): a
    department keeps the highest version it has seen, so a re-sent or reordered copy of an
    older one changes nothing.
    """

    event_type: ClassVar[str] = "permissions.changed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.GATEWAY_PERMISSIONS

    policy_version: int = Field(ge=1, le=2**53, description="Increases by one with every change")
    grants: list[RoleGrant] = Field(max_length=100, description="Every role and its permissions")
    changed_by: str = Field(min_length=1, max_length=200, description="The administrator's user id")
    changed_role: str = Field(min_length=1, max_length=64, description="The role whose permissions changed")
    changed_at: Timestamp

    def partition_key(self) -> str:
        return POLICY_KEY


# -- erasure ("right to be forgotten") -------------------------------------------------------

# The departments that erase a person in their own database and confirm it: a request is
# complete once each of them has sent its erasure.completed.
ERASURE_DEPARTMENTS: tuple[str, ...] = ("leads", "sales", "service-desk", "analytics")

# A keyed hash (crm_platform.pseudonym.email_hash): SHA-256 as 64 lower-case hex digits.
_HEX_DIGEST = r"^[0-9a-f]{64}$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"


class ErasureRequestedV1(Event):
    """An administrator asked that a person be forgotten (GDPR art. 17, PIPL art. 47).

    The person is named only by the keyed hash of their normalised e-mail (the install's one
    HMAC, ``crm_platform.pseudonym.email_hash``), never by the e-mail itself: the request is
    on the log for a year and must not itself be the personal data it erases. ``record_ids``
    optionally names records (a lead id, a contact id, ...) to erase as well, e.g. one kept
    under another e-mail; each department erases those of its own ids it finds.
    """

    event_type: ClassVar[str] = "erasure.requested"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.GATEWAY_ERASURE_REQUESTS

    request_id: str = Field(pattern=_ID, description="The gateway's id of the request")
    email_hash: str | None = Field(
        pattern=_HEX_DIGEST,
        description="HMAC-SHA256 (hex) of the normalised e-mail; null: named by record ids only",
    )
    record_ids: list[Annotated[str, Field(pattern=_ID)]] = Field(
        default_factory=list, max_length=20, description="Record ids to erase too (any department's)"
    )
    requested_at: Timestamp

    @model_validator(mode="after")
    def _names_the_person(self) -> ErasureRequestedV1:
        if self.email_hash is None and not self.record_ids:
            raise ValueError("an erasure request names the person: email_hash or record_ids")
        return self

    def partition_key(self) -> str:
        return self.request_id


class ErasureCompletedV1(Event):
    """A department erased (or anonymised) the person of a request in its own database.

    Sent once per (request, department), from the department's outbox; ``duration_ms`` is from
    the request's ``requested_at`` to this department's commit (transport and queueing
    included: the time the person waited). A department that rechecks its erasures (every one
    that stores people: ``crm_platform.erasure.Rechecks``) sends it in its recheck's
    transaction, after every transaction begun before the erasure has ended, with the records
    of both passes counted (its first pass is ``erasure.erased``); analytics, which keeps no
    personal data, and a department of an older release send it at the erasure's commit.
    """

    event_type: ClassVar[str] = "erasure.completed"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ERASURE_CONFIRMATIONS

    request_id: str = Field(pattern=_ID)
    department: Literal["leads", "sales", "service-desk", "analytics"]
    records_erased: int = Field(ge=0, le=2**31, description="Records erased or anonymised")
    audit_entries_rewritten: int = Field(ge=0, le=2**31, description="Audit entries whose values were erased")
    duration_ms: int = Field(ge=0, le=2**53, description="requested_at -> this department's commit")
    completed_at: Timestamp

    def partition_key(self) -> str:
        return self.request_id


class ErasureErasedV1(Event):
    """A department's first pass of a request: it erased what it found and will match the
    request once more at ``recheck_due_at`` (a late writer: a transaction that read the person
    before the erasure committed can store them after it), and only then sends
    ``erasure.completed`` with both passes counted.

    Sent once per (request, department), from the department's outbox in the erasure's own
    transaction, on the confirmations' topic ahead of the department's ``erasure.completed``
    (same key, one partition). A gateway of an older release does not know it (dead-lettered
    ``unknown_version``, nothing lost: it counts the ``erasure.completed`` that follows).
    """

    event_type: ClassVar[str] = "erasure.erased"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ERASURE_CONFIRMATIONS

    request_id: str = Field(pattern=_ID)
    department: Literal["leads", "sales", "service-desk", "analytics"]
    records_erased: int = Field(ge=0, le=2**31, description="Records erased or anonymised by the first pass")
    audit_entries_rewritten: int = Field(ge=0, le=2**31, description="Audit entries whose values were erased")
    duration_ms: int = Field(ge=0, le=2**53, description="requested_at -> this department's first commit")
    erased_at: Timestamp
    recheck_due_at: Timestamp = Field(description="When the department matches the request once more")

    def partition_key(self) -> str:
        return self.request_id
