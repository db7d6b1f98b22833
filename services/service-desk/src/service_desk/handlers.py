"""Use cases: a command or an event -> domain rules -> this service's store + emitted events.

Every state change runs in one ``Store.transaction``: the documents it writes
and the events it emits (through the outbox) commit together. The work may be
retried, so it only touches the database through ``tx.session`` and has no
other side effects; metrics are counted after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from crm_contracts import Envelope
from crm_contracts.events.sales import DealWonV1
from crm_contracts.events.service_desk import (
    CommitmentFlaggedV1,
    OnboardingCompletedV1,
    OnboardingStartedV1,
    SignalKind,
    TicketOpenedV1,
    TicketResolvedV1,
    UpsellSpottedV1,
)
from crm_platform.auth import Principal
from crm_platform.clock import Clock, to_millis
from crm_platform.consumer import Handler
from crm_platform.errors import NotFound, RuleViolation
from crm_platform.ids import new_id
from crm_platform.money import to_wire
from crm_platform.mongo import Store, Tx

from service_desk import metrics
from service_desk.domain import access
from service_desk.domain.accounts import (
    Account,
    AccountCommitment,
    AssignmentRole,
    OnboardingStatus,
    Signal,
    account_from_deal,
)
from service_desk.domain.config import Priority, ServiceDeskConfig
from service_desk.domain.roster import CsmEntry, active_csms, round_robin, validate_roster
from service_desk.domain.tickets import Ticket, TicketStatus, open_ticket
from service_desk.store import Repo

log = logging.getLogger("service_desk")

UNASSIGNED = "unassigned"  # the CSM named in onboarding_started when nobody is on the roster


@dataclass
class ConfigRecord:
    config: ServiceDeskConfig
    updated_at: datetime | None = None
    updated_by: str | None = None


@dataclass
class RosterRecord:
    csms: list[CsmEntry] = field(default_factory=list)
    updated_at: datetime | None = None
    updated_by: str | None = None


# --- consumed events ---------------------------------------------------------------------------


def deal_won_handler(clock: Clock, ids: Callable[[], str] = new_id) -> Handler:
    async def on_deal_won(tx: Tx, event: DealWonV1, envelope: Envelope) -> None:
        """A won deal becomes an account with onboarding and a CSM (once per deal)."""
        repo = Repo.of(tx)
        existing = await repo.account_by_deal(event.deal_id)
        if existing is not None:
            # Sales re-announced the same deal under a new event id: already done.
            log.info(
                "deal %s already has account %s; event %s changes nothing",
                event.deal_id,
                existing.account_id,
                envelope.event_id,
            )
            return
        config, _ = await repo.config()
        success, _ = await repo.success_config()
        roster, _ = await repo.roster()
        active = active_csms(roster)
        csm = round_robin(active, await repo.take_turn()) if active else None
        account = account_from_deal(
            event,
            account_id=ids(),
            csm=csm,
            checklist=config.onboarding_checklist,
            now=to_millis(clock()),
            journey_id=envelope.correlation_id,
            success=success,
        )
        await repo.insert_account(account)
        tx.emit(
            OnboardingStartedV1(
                account_id=account.account_id,
                deal_id=account.deal_id,
                account_name=account.name,
                csm=account.csm or UNASSIGNED,
                checklist=[i.title for i in account.onboarding.checklist],
            )
        )

    return on_deal_won


# --- commands and queries ----------------------------------------------------------------------


class ServiceDesk:
    def __init__(self, store: Store, clock: Clock, ids: Callable[[], str] = new_id) -> None:
        self.store = store
        self.clock = clock
        self.ids = ids
        # Rescores the account's health after a change here commits (bootstrap wires it to
        # lifecycle.rescore; health is derived: a crash in between leaves it stale until the
        # next POST /health/recompute, never wrong data).
        self.after_change: Callable[[str], Awaitable[None]] | None = None

    async def changed(self, account_id: str) -> None:
        if self.after_change is not None:
            await self.after_change(account_id)

    def now(self) -> datetime:
        return to_millis(self.clock())

    @property
    def reader(self) -> Repo:
        return Repo(self.store.db)

    # --- roster -----------------------------------------------------------------------------

    async def roster(self) -> RosterRecord:
        entries, doc = await self.reader.roster()
        return RosterRecord(entries, doc.get("updated_at"), doc.get("updated_by"))

    async def replace_roster(self, entries: list[CsmEntry], by: Principal) -> RosterRecord:
        roster = validate_roster(entries)
        now = self.now()

        async def work(tx: Tx) -> None:
            await Repo.of(tx).save_roster(roster, {"updated_at": now, "updated_by": by.user_id})

        await self.store.transaction(work)
        return RosterRecord(roster, now, by.user_id)

    # --- config -----------------------------------------------------------------------------

    async def config(self) -> ConfigRecord:
        config, doc = await self.reader.config()
        return ConfigRecord(config, doc.get("updated_at"), doc.get("updated_by"))

    async def replace_config(self, config: ServiceDeskConfig, by: Principal) -> ConfigRecord:
        now = self.now()

        async def work(tx: Tx) -> None:
            await Repo.of(tx).save_config(config, {"updated_at": now, "updated_by": by.user_id})

        await self.store.transaction(work)
        return ConfigRecord(config, now, by.user_id)

    # --- accounts ---------------------------------------------------------------------------

    async def list_accounts(
        self,
        user: Principal,
        *,
        csm: str | None = None,
        onboarding: OnboardingStatus | None = None,
        deal_id: str | None = None,
        limit: int = 100,
    ) -> list[Account]:
        if not access.sees_all(user.roles):
            if csm is not None and csm != user.user_id:
                return []  # a CSM's book is their own accounts
            csm = user.user_id
        return await self.reader.accounts(csm=csm, onboarding=onboarding, deal_id=deal_id, limit=limit)

    async def get_account(self, user: Principal, account_id: str) -> Account:
        return _visible_account(user, account_id, await self.reader.account(account_id))

    async def complete_checklist_item(self, user: Principal, account_id: str, item: str) -> Account:
        now = self.now()

        async def work(tx: Tx) -> tuple[Account, bool]:
            repo = Repo.of(tx)
            account = _visible_account(user, account_id, await repo.account(account_id))
            completed = account.complete_item(item, by=user.user_id, now=now)
            await repo.save_account(account)
            if completed:
                duration = account.onboarding.duration_seconds or 0.0
                assert account.onboarding.completed_at is not None
                tx.emit(
                    OnboardingCompletedV1(
                        account_id=account.account_id,
                        deal_id=account.deal_id,
                        csm=account.csm,
                        started_at=account.onboarding.started_at,
                        completed_at=account.onboarding.completed_at,
                        duration_seconds=duration,
                    ),
                    correlation_id=account.journey_id,
                )
            return account, completed

        account, completed = await self.store.transaction(work)
        if completed:
            metrics.ONBOARDING_SECONDS.observe(account.onboarding.duration_seconds or 0.0)
            await self.changed(account_id)
        return account

    async def assign_csm(self, user: Principal, account_id: str, csm_user_id: str) -> Account:
        async def work(tx: Tx) -> Account:
            repo = Repo.of(tx)
            account = _visible_account(user, account_id, await repo.account(account_id))
            roster, _ = await repo.roster()
            if csm_user_id not in active_csms(roster):
                raise RuleViolation(
                    f"user {csm_user_id!r} is not an active CSM on the roster (PUT /csms)", field="user_id"
                )
            if account.csm != csm_user_id:  # the same CSM again changes (and records) nothing
                account.reassign(AssignmentRole.CSM, csm_user_id, by=user.user_id, now=self.now())
                await repo.save_account(account)
            return account

        return await self.store.transaction(work)

    async def flag_commitment(
        self, user: Principal, account_id: str, commitment_id: str, reason: str
    ) -> AccountCommitment:
        now = self.now()
        flag_id = self.ids()

        async def work(tx: Tx) -> AccountCommitment:
            repo = Repo.of(tx)
            account = _visible_account(user, account_id, await repo.account(account_id))
            commitment = account.flag_commitment(
                commitment_id, flag_id=flag_id, reason=reason, by=user.user_id, now=now
            )
            await repo.save_account(account)
            tx.emit(
                CommitmentFlaggedV1(
                    flag_id=flag_id,
                    account_id=account.account_id,
                    deal_id=account.deal_id,
                    commitment_id=commitment.commitment_id,
                    reason=commitment.flag_reason or reason,
                    flagged_by=user.user_id,
                ),
                correlation_id=account.journey_id,
            )
            return commitment

        commitment = await self.store.transaction(work)
        await self.changed(account_id)
        return commitment

    async def deliver_commitment(
        self, user: Principal, account_id: str, commitment_id: str
    ) -> AccountCommitment:
        now = self.now()

        async def work(tx: Tx) -> AccountCommitment:
            repo = Repo.of(tx)
            account = _visible_account(user, account_id, await repo.account(account_id))
            commitment = account.deliver_commitment(commitment_id, by=user.user_id, now=now)
            await repo.save_account(account)
            return commitment

        commitment = await self.store.transaction(work)
        await self.changed(account_id)
        return commitment

    async def spot_signal(
        self,
        user: Principal,
        account_id: str,
        *,
        kind: SignalKind,
        description: str,
        estimated_value: Decimal | None,
    ) -> Signal:
        now = self.now()
        signal_id = self.ids()

        async def work(tx: Tx) -> Signal:
            repo = Repo.of(tx)
            account = _visible_account(user, account_id, await repo.account(account_id))
            signal = account.spot_signal(
                signal_id=signal_id,
                kind=kind,
                description=description,
                estimated_value=estimated_value,
                by=user.user_id,
                now=now,
            )
            await repo.save_account(account)
            tx.emit(
                UpsellSpottedV1(
                    signal_id=signal.signal_id,
                    account_id=account.account_id,
                    deal_id=account.deal_id,
                    account_name=account.name,
                    sales_owner=account.sales_owner,
                    kind=signal.kind,
                    description=signal.description,
                    estimated_value=to_wire(signal.estimated_value),
                    spotted_by=user.user_id,
                ),
                correlation_id=account.journey_id,
            )
            return signal

        signal = await self.store.transaction(work)
        metrics.SIGNALS.labels(signal.kind.value).inc()
        return signal

    # --- tickets ----------------------------------------------------------------------------

    async def open_ticket(
        self,
        user: Principal,
        *,
        account_id: str,
        subject: str,
        request: str,
        priority: Priority,
        assign_to_me: bool,
    ) -> Ticket:
        now = self.now()
        ticket_id = self.ids()

        async def work(tx: Tx) -> Ticket:
            repo = Repo.of(tx)
            account = await repo.account(account_id)
            if account is None or not access.can_see_account(
                user.roles, user.user_id, account.csm, account.account_manager
            ):
                raise RuleViolation(f"unknown account {account_id!r}", field="account_id")
            config, _ = await repo.config()
            assignee = user.user_id if assign_to_me or account.csm is None else account.csm
            ticket = open_ticket(
                ticket_id=ticket_id,
                account_id=account.account_id,
                account_name=account.name,
                subject=subject,
                request=request,
                priority=priority,
                opened_by=user.user_id,
                assignee=assignee,
                target=config.target(priority),
                now=now,
            )
            await repo.insert_ticket(ticket)
            tx.emit(
                TicketOpenedV1(
                    ticket_id=ticket.ticket_id,
                    account_id=ticket.account_id,
                    priority=ticket.priority.value,
                    assignee=ticket.assignee,
                ),
                correlation_id=account.journey_id,
            )
            return ticket

        ticket = await self.store.transaction(work)
        metrics.TICKETS_OPENED.labels(ticket.priority.value).inc()
        return ticket

    async def add_progress(self, user: Principal, ticket_id: str, note: str) -> Ticket:
        now = self.now()

        async def work(tx: Tx) -> Ticket:
            repo = Repo.of(tx)
            ticket, _ = await self._visible_ticket(repo, user, ticket_id)
            ticket.add_progress(note, by=user.user_id, now=now)
            await repo.save_ticket(ticket)
            return ticket

        return await self.store.transaction(work)

    async def resolve_ticket(self, user: Principal, ticket_id: str, result: str) -> Ticket:
        now = self.now()

        async def work(tx: Tx) -> Ticket:
            repo = Repo.of(tx)
            ticket, account = await self._visible_ticket(repo, user, ticket_id)
            ticket.resolve(result, by=user.user_id, now=now)
            await repo.save_ticket(ticket)
            assert ticket.resolution_seconds is not None
            tx.emit(
                TicketResolvedV1(
                    ticket_id=ticket.ticket_id,
                    account_id=ticket.account_id,
                    first_response_seconds=ticket.first_response_seconds,
                    resolution_seconds=ticket.resolution_seconds,
                    first_response_breached=bool(ticket.first_response_breached),
                    resolution_breached=bool(ticket.resolution_breached),
                ),
                correlation_id=account.journey_id if account else None,
            )
            return ticket

        ticket = await self.store.transaction(work)
        metrics.TICKETS_RESOLVED.labels(
            ticket.priority.value,
            str(bool(ticket.first_response_breached)).lower(),
            str(bool(ticket.resolution_breached)).lower(),
        ).inc()
        await self.changed(ticket.account_id)
        return ticket

    async def get_ticket(self, user: Principal, ticket_id: str) -> Ticket:
        ticket, _ = await self._visible_ticket(self.reader, user, ticket_id)
        return ticket

    async def list_tickets(
        self, user: Principal, *, account_id: str | None, status: TicketStatus | None, limit: int
    ) -> list[Ticket]:
        visible_to = None
        if not access.sees_all(user.roles):
            visible_to = (user.user_id, await self.reader.account_ids_of(user.user_id))
        return await self.reader.tickets(
            account_id=account_id, status=status, visible_to=visible_to, limit=limit
        )

    async def _visible_ticket(
        self, repo: Repo, user: Principal, ticket_id: str
    ) -> tuple[Ticket, Account | None]:
        ticket = await repo.ticket(ticket_id)
        account = await repo.account(ticket.account_id) if ticket else None
        if ticket is None or not access.can_see_ticket(
            user.roles,
            user.user_id,
            assignee=ticket.assignee,
            account_csm=account.csm if account else None,
        ):
            raise NotFound(f"ticket {ticket_id} not found", ticket_id=ticket_id)
        return ticket, account


def _visible_account(user: Principal, account_id: str, account: Account | None) -> Account:
    """The account, or 404 when it does not exist or is outside this user's book."""
    if account is None or not access.can_see_account(
        user.roles, user.user_id, account.csm, account.account_manager
    ):
        raise NotFound(f"account {account_id} not found", account_id=account_id)
    return account
