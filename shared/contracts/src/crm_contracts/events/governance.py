"""Governance events the gateway emits for every department (issue 9)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

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
