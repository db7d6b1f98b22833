"""Accounts: the won deal becomes an account; onboarding, its CSM, commitments, signals; the CSM
roster and the desk's configuration (the service layer: load -> domain method -> save -> emit)."""

from __future__ import annotations

import logging
from decimal import Decimal

from crm_contracts import Envelope
from crm_contracts.events.sales import DealWonV1
from crm_contracts.events.service_desk import SignalKind
from crm_platform.actor import Actor
from crm_platform.clock import now_millis

from service_desk import metrics
from service_desk.domain.accounts import Account, AccountCommitment, AssignmentRole, Signal, account_from_deal
from service_desk.domain.config import ConfigRecord, ServiceDeskConfig
from service_desk.domain.roster import CsmEntry, RosterRecord, active_csms, round_robin, validate_roster
from service_desk.handlers import success
from service_desk.handlers.loading import load_account
from service_desk.repository import SuccessUnit, SuccessUoW

log = logging.getLogger("service_desk")


# --- consumed: the won deal ---------------------------------------------------------------------


async def on_deal_won(uow: SuccessUoW, event: DealWonV1, envelope: Envelope) -> None:
    """A won deal becomes an account with onboarding and a CSM (once per deal)."""

    async def work(unit: SuccessUnit) -> None:
        existing = await unit.accounts.by_deal(event.deal_id)
        if existing is not None:  # sales re-announced the same deal under a new event id: done
            log.info(
                "deal %s already has account %s; event %s changes nothing",
                event.deal_id,
                existing.account_id,
                envelope.event_id,
            )
            return
        desk = await unit.settings.desk_config()
        success_config = await unit.settings.config()
        account = account_from_deal(
            event,
            account_id=uow.new_id(),
            csm=await _next_csm(unit),
            checklist=desk.config.onboarding_checklist,
            now=now_millis(uow.clock),
            journey_id=envelope.correlation_id,
            success=success_config,
        )
        await unit.accounts.add(account)
        unit.emit(account.onboarding_started())

    await uow.run(work)


async def _next_csm(unit: SuccessUnit) -> str | None:
    """The next active CSM in round-robin order (a turn is taken only when there is one)."""
    active = active_csms(await unit.settings.roster())
    return round_robin(active, await unit.settings.take_turn()) if active else None


# --- the roster and the configuration -----------------------------------------------------------


async def roster(uow: SuccessUoW) -> RosterRecord:
    async def work(unit: SuccessUnit) -> RosterRecord:
        return await unit.settings.roster_record()

    return await uow.run(work)


async def replace_roster(uow: SuccessUoW, entries: list[CsmEntry], actor: Actor) -> RosterRecord:
    record = RosterRecord(validate_roster(entries), now_millis(uow.clock), actor.user_id)

    async def work(unit: SuccessUnit) -> None:
        await unit.settings.save_roster(record)

    await uow.run(work)
    return record


async def desk_config(uow: SuccessUoW) -> ConfigRecord:
    async def work(unit: SuccessUnit) -> ConfigRecord:
        return await unit.settings.desk_config()

    return await uow.run(work)


async def replace_desk_config(uow: SuccessUoW, config: ServiceDeskConfig, actor: Actor) -> ConfigRecord:
    record = ConfigRecord(config, now_millis(uow.clock), actor.user_id)

    async def work(unit: SuccessUnit) -> None:
        await unit.settings.save_desk_config(record)

    await uow.run(work)
    return record


# --- accounts -----------------------------------------------------------------------------------


async def get_account(uow: SuccessUoW, account_id: str, actor: Actor) -> Account:
    async def work(unit: SuccessUnit) -> Account:
        return await load_account(unit, actor, account_id)

    return await uow.run(work)


async def complete_checklist_item(uow: SuccessUoW, account_id: str, item: str, actor: Actor) -> Account:
    """Tick one onboarding item (``account.onboarding_step_completed``); the last one completes the
    onboarding (``account.onboarding_completed``)."""

    async def work(unit: SuccessUnit) -> tuple[Account, bool]:
        account = await load_account(unit, actor, account_id)
        now = now_millis(uow.clock)
        completed = account.complete_item(item, by=actor.user_id, now=now)
        await unit.accounts.save(account)
        unit.emit(account.step_completed(item, by=actor.user_id, now=now), correlation_id=account.journey_id)
        if completed is not None:
            unit.emit(completed, correlation_id=account.journey_id)
        return account, completed is not None

    account, completed = await uow.run(work)
    if completed:
        metrics.observe_onboarding(account.onboarding.duration_seconds or 0.0)
        await success.rescore(uow, account_id)
    return account


async def assign_csm(uow: SuccessUoW, account_id: str, csm: str, actor: Actor) -> Account:
    """Hand the account to another active CSM of the roster (the same one again records nothing)."""

    async def work(unit: SuccessUnit) -> Account:
        account = await load_account(unit, actor, account_id)
        active = active_csms(await unit.settings.roster())
        if account.assign(
            AssignmentRole.CSM, csm, active=active, by=actor.user_id, now=now_millis(uow.clock)
        ):
            await unit.accounts.save(account)
        return account

    return await uow.run(work)


async def flag_commitment(
    uow: SuccessUoW, account_id: str, commitment_id: str, reason: str, actor: Actor
) -> AccountCommitment:
    """Customer success says sales promised more than can be delivered (``commitment.flagged``)."""
    flag_id = uow.new_id()

    async def work(unit: SuccessUnit) -> AccountCommitment:
        account = await load_account(unit, actor, account_id)
        commitment = account.flag_commitment(
            commitment_id, flag_id=flag_id, reason=reason, by=actor.user_id, now=now_millis(uow.clock)
        )
        await unit.accounts.save(account)
        unit.emit(account.commitment_flagged(commitment), correlation_id=account.journey_id)
        return commitment

    commitment = await uow.run(work)
    await success.rescore(uow, account_id)
    return commitment


async def deliver_commitment(
    uow: SuccessUoW, account_id: str, commitment_id: str, actor: Actor
) -> AccountCommitment:
    async def work(unit: SuccessUnit) -> AccountCommitment:
        account = await load_account(unit, actor, account_id)
        commitment = account.deliver_commitment(commitment_id, by=actor.user_id, now=now_millis(uow.clock))
        await unit.accounts.save(account)
        return commitment

    commitment = await uow.run(work)
    await success.rescore(uow, account_id)
    return commitment


async def spot_signal(
    uow: SuccessUoW,
    account_id: str,
    kind: SignalKind,
    description: str,
    estimated_value: Decimal | None,
    actor: Actor,
) -> Signal:
    """Hand an upsell or renewal chance to sales (``upsell.spotted``)."""
    signal_id = uow.new_id()

    async def work(unit: SuccessUnit) -> Signal:
        account = await load_account(unit, actor, account_id)
        signal = account.spot_signal(
            signal_id=signal_id,
            kind=kind,
            description=description,
            estimated_value=estimated_value,
            by=actor.user_id,
            now=now_millis(uow.clock),
        )
        await unit.accounts.save(account)
        unit.emit(account.upsell_spotted(signal), correlation_id=account.journey_id)
        return signal

    signal = await uow.run(work)
    metrics.observe_signal(signal.kind.value)
    return signal
