"""Voice-of-the-customer action items: raised by customer success, worked by the owning department.

An action item is a handoff like the others. Customer success raises it (from a ticket,
a survey comment, a check-in or an account note) for the department that owns the fix;
that department stores it in its own queue (``crm_platform.action_items``), where it is
accepted, assigned, done or declined with a reason, and every change travels back to
customer success, which shows it on the customer's record.

One event type per direction, because the handoff table names one sender and one
receiver per event type (receipts and latency series are per handoff):

| event | topic | handoff |
| --- | --- | --- |
| ``action_item.raised_for_marketing`` | ``crm.service-desk.action-items`` | customer-success -> marketing |
| ``action_item.raised_for_sales`` | ``crm.service-desk.action-items`` | customer-success -> sales |
| ``action_item.raised_for_customer_success`` | ``crm.service-desk.action-items`` | none: its own queue |
| ``action_item.updated_by_marketing`` | ``crm.leads.action-item-updates`` | marketing -> customer-success |
| ``action_item.updated_by_sales`` | ``crm.sales.action-item-updates`` | sales -> customer-success |
| ``action_item.updated_by_customer_success`` | ``crm.service-desk.action-items`` | none: its own queue |
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from crm_contracts import topics
from crm_contracts.base import Event
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import Value

MARKETING, SALES, CUSTOMER_SUCCESS = "marketing", "sales", "customer-success"


class OwningDepartment(StrEnum):
    MARKETING = MARKETING
    SALES = SALES
    CUSTOMER_SUCCESS = CUSTOMER_SUCCESS


class SourceKind(StrEnum):
    TICKET = "ticket"
    SURVEY = "survey"
    CHECK_IN = "check_in"
    ACCOUNT_NOTE = "account_note"


class SourceRecord(Value):
    """Where the customer said it: the record in customer success' own data."""

    kind: SourceKind
    record_id: str = Field(min_length=1, max_length=200)
    excerpt: str | None = Field(default=None, max_length=2000, description="What the customer said")


class ActionItemStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    ASSIGNED = "assigned"
    DONE = "done"
    DECLINED = "declined"
    ESCALATED = "escalated"  # overdue: handed to the department's manager (automatic)


class _Raised(Event):
    """What every ``action_item.raised_for_*`` carries."""

    item_id: str = Field(min_length=1, max_length=100)
    department: OwningDepartment
    title: str = Field(min_length=1, max_length=500, description="What is to be done")
    details: str | None = Field(default=None, max_length=5000)
    owner: str | None = Field(default=None, description="A user of the owning department; none: its queue")
    due_at: Timestamp
    account_id: str
    account_name: str
    source: SourceRecord
    raised_by: str
    raised_at: Timestamp

    expected_department: ClassVar[str]

    @model_validator(mode="after")
    def _department_matches_the_event(self) -> _Raised:
        if self.department != self.expected_department:
            raise ValueError(f"department must be {self.expected_department!r} for {self.event_type}")
        return self

    def partition_key(self) -> str:
        return self.account_id


class ActionItemRaisedForMarketingV1(_Raised):
    """HANDOFF customer success -> marketing: an action item for marketing's queue."""

    event_type: ClassVar[str] = "action_item.raised_for_marketing"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACTION_ITEMS
    expected_department: ClassVar[str] = MARKETING


class ActionItemRaisedForSalesV1(_Raised):
    """HANDOFF customer success -> sales: an action item for sales' queue."""

    event_type: ClassVar[str] = "action_item.raised_for_sales"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACTION_ITEMS
    expected_department: ClassVar[str] = SALES


class ActionItemRaisedForCustomerSuccessV1(_Raised):
    """An action item customer success keeps in its own queue (no handoff; for analytics)."""

    event_type: ClassVar[str] = "action_item.raised_for_customer_success"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACTION_ITEMS
    expected_department: ClassVar[str] = CUSTOMER_SUCCESS


class _Updated(Event):
    """What every ``action_item.updated_by_*`` carries: one step of the item in its queue."""

    item_id: str = Field(min_length=1, max_length=100)
    department: OwningDepartment
    account_id: str
    status: ActionItemStatus
    assignee: str | None = None
    reason: str | None = Field(default=None, max_length=2000, description="Required when declined")
    acted_by: str = Field(description="The user who acted; 'system' for an escalation")
    automatic: bool = Field(default=False, description="True for an escalation (no human acted)")
    escalated_to: str | None = Field(default=None, description="The role the overdue item went to")
    raised_at: Timestamp
    due_at: Timestamp
    acted_at: Timestamp

    expected_department: ClassVar[str]

    @model_validator(mode="after")
    def _consistent(self) -> _Updated:
        if self.department != self.expected_department:
            raise ValueError(f"department must be {self.expected_department!r} for {self.event_type}")
        if self.status == ActionItemStatus.DECLINED and not self.reason:
            raise ValueError("reason is required when status is 'declined'")
        return self

    def partition_key(self) -> str:
        return self.account_id


class ActionItemUpdatedByMarketingV1(_Updated):
    """HANDOFF marketing -> customer success: what marketing did with an action item."""

    event_type: ClassVar[str] = "action_item.updated_by_marketing"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.LEADS_ACTION_ITEM_UPDATES
    expected_department: ClassVar[str] = MARKETING


class ActionItemUpdatedBySalesV1(_Updated):
    """HANDOFF sales -> customer success: what sales did with an action item."""

    event_type: ClassVar[str] = "action_item.updated_by_sales"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.SALES_ACTION_ITEM_UPDATES
    expected_department: ClassVar[str] = SALES


class ActionItemUpdatedByCustomerSuccessV1(_Updated):
    """A step of an item in customer success' own queue (no handoff; for analytics)."""

    event_type: ClassVar[str] = "action_item.updated_by_customer_success"
    version: ClassVar[int] = 1
    topic: ClassVar[str] = topics.ACTION_ITEMS
    expected_department: ClassVar[str] = CUSTOMER_SUCCESS


RAISED_BY_DEPARTMENT: dict[str, type[_Raised]] = {
    MARKETING: ActionItemRaisedForMarketingV1,
    SALES: ActionItemRaisedForSalesV1,
    CUSTOMER_SUCCESS: ActionItemRaisedForCustomerSuccessV1,
}
UPDATED_BY_DEPARTMENT: dict[str, type[_Updated]] = {
    MARKETING: ActionItemUpdatedByMarketingV1,
    SALES: ActionItemUpdatedBySalesV1,
    CUSTOMER_SUCCESS: ActionItemUpdatedByCustomerSuccessV1,
}
