"""Customer success handlers over an account's whole life: contract terms, tiers, account
managers, renewals, check-ins, health and surveys.

The service layer in the shape of docs/SERVICE-GUIDE.md: one function per command, each
``uow.run(work)`` where ``work`` loads through the unit's repositories, lets ONE domain
function decide, saves and emits (one transaction with the outbox). Unit tests run them on
``fakes.py``; the app on ``store.MongoUnitOfWork``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from crm_contracts.events.common import Money
from crm_contracts.events.service_desk import RenewalRecordedV1
from crm_platform.auth import Principal
from crm_platform.clock import to_millis
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.money import to_wire
from crm_platform.uow import UnitOfWork

from service_desk.domain import access
from service_desk.domain.accounts import Account, AssignmentRole
from service_desk.domain.renewals import (
    RenewalDecision,
    RenewalDue,
    RenewalRecord,
    record_renewal,
    renewal_list,
)
from service_desk.domain.roster import active_csms
from service_desk.domain.success_config import SuccessConfig
from service_desk.repository import Meta, SuccessUnit

Uow = UnitOfWork[SuccessUnit]


def now_millis(uow: Uow) -> datetime:
    """MongoDB keeps milliseconds: what a write answers is what a read returns."""
    return to_millis(uow.clock())


def visible(user: Principal, account_id: str, account: Account | None) -> Account:
    """The account, or 404 when it does not exist or is outside the user's book."""
    if account is None or not access.can_see_account(
        user.roles, user.user_id, account.csm, account.account_manager
    ):
        raise NotFound(f"account {account_id} not found", account_id=account_id)
    return account


async def load(unit: SuccessUnit, user: Principal, account_id: str) -> Account:
    return visible(user, account_id, await unit.accounts.get(account_id))


# --- configuration ------------------------------------------------------------------------------


async def success_config(uow: Uow) -> tuple[SuccessConfig, Meta]:
    async def work(unit: SuccessUnit) -> tuple[SuccessConfig, Meta]:
        return await unit.settings.config()

    return await uow.run(work)


async def replace_success_config(uow: Uow, config: SuccessConfig, user: Principal) -> Meta:
    meta: Meta = {"updated_at": now_millis(uow), "updated_by": user.user_id}

    async def work(unit: SuccessUnit) -> None:
        await unit.settings.save_config(config, meta)

    await uow.run(work)
    return meta


# --- tiers and account managers -----------------------------------------------------------------


async def change_tier(uow: Uow, account_id: str, tier_name: str, user: Principal) -> Account:
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> Account:
        account = await load(unit, user, account_id)
        config, _ = await unit.settings.config()
        tier = config.tier(tier_name)
        if tier is None:
            raise RuleViolation(
                f"unknown tier {tier_name!r}; configured: {config.tier_names()}", field="tier"
            )
        account.change_tier(tier, by=user.user_id, now=now)
        await unit.accounts.save(account)
        return account

    return await uow.run(work)


async def assign_account_manager(
    uow: Uow, account_id: str, manager: str | None, reason: str | None, user: Principal
) -> Account:
    """Name (or, with ``None``, remove) the account manager; every change is recorded."""
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> Account:
        account = await load(unit, user, account_id)
        if manager is not None and manager not in active_csms(await unit.settings.roster()):
            raise RuleViolation(
                f"user {manager!r} is not an active CSM on the roster (PUT /csms)", field="user_id"
            )
        if account.account_manager != manager:  # the same manager again changes (and records) nothing
            account.reassign(AssignmentRole.ACCOUNT_MANAGER, manager, by=user.user_id, now=now, reason=reason)
            await unit.accounts.save(account)
        return account

    return await uow.run(work)


# --- renewals -----------------------------------------------------------------------------------


def book_of(user: Principal, manager: str | None) -> tuple[bool, str | None]:
    """(may see anything, whose accounts): a CSM sees only their own; reps and admins anyone's."""
    if access.sees_all(user.roles):
        return True, manager
    return manager is None or manager == user.user_id, user.user_id


async def renewals_due(
    uow: Uow, manager: str | None, window_days: int | None, user: Principal
) -> list[RenewalDue]:
    """The renewal list: renewals due within the window (default: configured), overdue first."""
    allowed, member = book_of(user, manager)
    now = now_millis(uow)

    async def work(unit: SuccessUnit) -> list[RenewalDue]:
        if not allowed:
            return []
        config, _ = await unit.settings.config()
        window = window_days or config.renewal_window_days
        accounts = await unit.accounts.renewing(until=now + timedelta(days=window), member=member)
        return renewal_list(accounts, now=now, window_days=window)

    return await uow.run(work)


async def record_renewal_outcome(
    uow: Uow, account_id: str, decision: RenewalDecision, user: Principal
) -> RenewalRecord:
    now, renewal_id = now_millis(uow), uow.new_id()

    async def work(unit: SuccessUnit) -> RenewalRecord:
        account = await load(unit, user, account_id)
        record = record_renewal(account, decision, renewal_id=renewal_id, by=user.user_id, now=now)
        await unit.accounts.save(account)
        await unit.renewals.add(record)
        unit.emit(renewal_recorded(record), correlation_id=account.journey_id)
        return record

    return await uow.run(work)


def renewal_recorded(record: RenewalRecord) -> RenewalRecordedV1:
    return RenewalRecordedV1(
        renewal_id=record.renewal_id,
        account_id=record.account_id,
        deal_id=record.deal_id,
        tier=record.tier,
        account_manager=record.account_manager,
        outcome=record.outcome,
        due_date=record.due_date,
        previous_value=Money(amount=to_wire(record.previous_amount) or 0.0, currency=record.currency),
        new_term=record.new_term.to_contract() if record.new_term else None,
        churn_reason=record.churn_reason,
        recorded_by=record.recorded_by,
    )


async def account_renewals(uow: Uow, account_id: str, user: Principal) -> list[RenewalRecord]:
    async def work(unit: SuccessUnit) -> list[RenewalRecord]:
        await load(unit, user, account_id)
        return await unit.renewals.of_account(account_id)

    return await uow.run(work)
