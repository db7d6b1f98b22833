"""Voice-of-the-customer action items: ONE queue implementation every department wires in.

Customer success raises an action item for the department that owns the fix
(``crm_contracts.events.action_items``); that department's service stores it in
its own database and works it here. The pieces, from the inside out:

- :mod:`.domain`: the :class:`~.domain.ActionItem` entity and its rules (pure);
- :mod:`.repository`: the repository interface, its MongoDB implementation (the
  service's own ``action_items`` collection) and an in-memory fake for unit tests;
- :mod:`.handlers`: the use cases (receive, act, escalate overdue items) and
  :class:`~.handlers.ActionItemQueue`, which runs them in the service's unit of work;
- :mod:`.api`: :func:`~.api.action_queue_router`, the HTTP routes over one queue.

A service wires these in one module of its own (e.g. ``sales/action_items.py``):
its department, who are members and managers, the consumer handler for its
``action_item.raised_for_*`` event and the escalation job.
"""
