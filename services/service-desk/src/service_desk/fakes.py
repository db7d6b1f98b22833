"""In-memory implementations of ``repository.py``'s Protocols, for unit tests (never production)."""

from __future__ import annotations

from datetime import datetime

from crm_platform.uow import FakeUnit

from service_desk.domain.accounts import Account, AccountStatus
from service_desk.domain.renewals import RenewalRecord
from service_desk.domain.roster import CsmEntry
from service_desk.domain.success_config import SuccessConfig
from service_desk.repository import Meta


class InMemoryAccounts:
    def __init__(self) -> None:
        self.items: dict[str, Account] = {}

    async def get(self, account_id: str) -> Account | None:
        found = self.items.get(account_id)
        return found.model_copy(deep=True) if found else None

    async def save(self, account: Account) -> None:
        self.items[account.account_id] = account.model_copy(deep=True)

    async def renewing(self, *, until: datetime, member: str | None) -> list[Account]:
        found = [
            a.model_copy(deep=True)
            for a in self.items.values()
            if a.status == AccountStatus.ACTIVE
            and a.term is not None
            and a.term.renewal_date <= until
            and (member is None or member in (a.csm, a.account_manager))
        ]
        return sorted(found, key=lambda a: a.term.renewal_date if a.term else until)


class InMemoryRenewals:
    def __init__(self) -> None:
        self.items: list[RenewalRecord] = []

    async def add(self, record: RenewalRecord) -> None:
        self.items.append(record)

    async def of_account(self, account_id: str) -> list[RenewalRecord]:
        found = [r for r in self.items if r.account_id == account_id]
        return sorted(found, key=lambda r: r.recorded_at, reverse=True)


class InMemorySettings:
    def __init__(self) -> None:
        self.csms: list[CsmEntry] = []
        self.success: SuccessConfig = SuccessConfig()
        self.meta: Meta = {}

    async def roster(self) -> list[CsmEntry]:
        return list(self.csms)

    async def config(self) -> tuple[SuccessConfig, Meta]:
        return self.success, dict(self.meta)

    async def save_config(self, config: SuccessConfig, meta: Meta) -> None:
        self.success, self.meta = config, dict(meta)


class FakeSuccessUnit(FakeUnit):
    """The in-memory unit: fakes of every repository; emitted events are kept in ``events``."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts = InMemoryAccounts()
        self.renewals = InMemoryRenewals()
        self.settings = InMemorySettings()
