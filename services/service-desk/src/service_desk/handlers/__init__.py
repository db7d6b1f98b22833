"""The service desk's service layer (docs/SERVICE-GUIDE.md), one module per part of the desk.

Every handler is ``uow.run(work)`` where ``work`` loads through the unit's repositories
(``repository.SuccessUnit``), lets ONE domain method decide, saves and emits: the writes and
the emitted events (the outbox) commit in ONE MongoDB transaction, and inside a consumer
that transaction also holds the processed-event ledger entry and the handoff receipt. A
transaction may be retried, so ``work`` touches nothing but its unit, with one exception:
the CSM round-robin turn (``settings.take_turn``) is its own write outside the transaction
(``crm_platform.counters``: a retried or aborted one skips a turn). Metrics are observed
after the commit; so is the health rescore that a ticket, commitment or onboarding change
causes (``success.rescore``, its own transaction: health is derived, so a crash in between
leaves it stale until the next recompute, never wrong).

- ``accounts``: the won deal becomes an account; onboarding, CSM, commitments, signals, the
  roster and the desk's configuration;
- ``tickets``: support cases and their SLA timers;
- ``success``: terms, tiers, account managers, renewals, check-ins, health, surveys;
- ``reviews``: commitment reviews before sales may win a deal;
- ``action_items``: voice of the customer: items raised for the owning department, their
  steps recorded as they come back;
- ``loading``: the loads every module shares (404 outside the actor's book).
"""
