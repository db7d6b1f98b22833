"""What the customer-success handlers (``lifecycle.py``) need from storage: one small Protocol
per aggregate and the unit they work in (repositories + ``emit``), run by
``crm_platform.uow`` (``UnitOfWork[SuccessUnit]``).

The MongoDB implementations are in ``store.py``, the in-memory fakes in ``fakes.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from crm_contracts.base import Event

from service_desk.domain.accounts import Account
from service_desk.domain.renewals import RenewalRecord
from service_desk.domain.roster import CsmEntry
from service_desk.domain.success_config import SuccessConfig

Meta = dict[str, Any]


class AccountRepository(Protocol):
    async def get(self, account_id: str) -> Account | None: ...
    async def save(self, account: Account) -> None: ...
    async def renewing(self, *, until: datetime, member: str | None) -> list[Account]:
        """Active accounts whose renewal date is at most ``until`` (of ``member``, as CSM or
        account manager, when given), soonest first."""
        ...


class RenewalRepository(Protocol):
    async def add(self, record: RenewalRecord) -> None: ...
    async def of_account(self, account_id: str) -> list[RenewalRecord]: ...


class SuccessSettings(Protocol):
    async def roster(self) -> list[CsmEntry]: ...
    async def config(self) -> tuple[SuccessConfig, Meta]: ...
    async def save_config(self, config: SuccessConfig, meta: Meta) -> None: ...


class SuccessUnit(Protocol):
    """What one customer-success handler works with inside its transaction."""

    @property
    def accounts(self) -> AccountRepository: ...
    @property
    def renewals(self) -> RenewalRepository: ...
    @property
    def settings(self) -> SuccessSettings: ...

    def emit(self, event: Event, *, correlation_id: str | None = None) -> None: ...
