"""Retention: each service deletes or anonymises its own records once they are past the
retention period of their record type (issue 9, governance).

A service declares its record types (:class:`Rule`: the collection, the time a record's age
counts from, which records are eligible at all, and whether an expired one is deleted or
anonymised, with the values its personal fields are overwritten with). The periods come from
configuration, per record type: ``CRM_RETENTION_DAYS`` (JSON, e.g. ``{"contact": 1095}``);
a type with no period is kept. :func:`retention_job` is a runtime background job that
enforces them every ``CRM_RETENTION_EVERY_SECONDS``.

Each round works in batches, each in ONE transaction of the service's store, so the audit
log (``crm_platform.audit``) records every deletion and anonymisation with its before and
after, attributed to ``system:<service>`` with the operation ``RETENTION <record type>``.
An anonymised record gets ``retention.anonymised_at`` and is not touched again; a record
changed between the round's read and its transaction is re-checked against the filter in
the transaction (the same filter selects it), so a record freshly updated is not expired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from crm_platform import audit
from crm_platform.clock import Clock, now_millis, system_clock
from crm_platform.mongo import Store, Tx

log = logging.getLogger("crm.retention")

Doc = dict[str, Any]
ANONYMISED_AT = "retention.anonymised_at"
DEFAULT_BATCH = 500
ANONYMISED = "[anonymised]"  # what a person's name (or free text about them) becomes


def anonymous_email(doc_id: Any) -> str:
    """A valid, unique, undeliverable email in place of a person's (emails are unique keys)."""
    return f"anonymised-{doc_id}@anonymised.example"


class Action(StrEnum):
    DELETE = "delete"
    ANONYMISE = "anonymise"


@dataclass(frozen=True)
class Rule:
    """One record type's retention: what expires, from when, and what happens to it."""

    record_type: str
    collection: str
    age_field: str  # the record's age counts from this time (its last change, its close)
    action: Action
    eligible: Mapping[str, Any] = field(default_factory=dict)  # only these records expire
    # Anonymise: field -> new value; a callable gets the record's id (for unique fields).
    scrub: Mapping[str, Any] = field(default_factory=dict)

    def expired(self, cutoff: datetime) -> Doc:
        query: Doc = {**self.eligible, self.age_field: {"$lt": cutoff}}
        if self.action is Action.ANONYMISE:
            query[ANONYMISED_AT] = None
        return query

    def scrubbed(self, doc_id: Any, now: datetime) -> Doc:
        values = {k: v(doc_id) if callable(v) else v for k, v in self.scrub.items()}
        return {**values, ANONYMISED_AT: now}


def periods(rules: Sequence[Rule], days: Mapping[str, int]) -> dict[str, timedelta]:
    """The configured period of each of ``rules``' record types (unknown types are refused)."""
    known = {r.record_type for r in rules}
    unknown = sorted(set(days) - known)
    if unknown:
        raise ValueError(f"CRM_RETENTION_DAYS names unknown record types {unknown}; known: {sorted(known)}")
    return {t: timedelta(days=d) for t, d in days.items()}


async def _batch(store: Store, rule: Rule, cutoff: datetime, now: datetime, limit: int) -> int:
    ids = [
        d["_id"]
        for d in await store.db[rule.collection].find(rule.expired(cutoff), {"_id": 1}).limit(limit).to_list()
    ]
    if not ids:
        return 0

    async def work(tx: Tx) -> int:
        col = tx.db[rule.collection]
        selected = {"$and": [{"_id": {"$in": ids}}, rule.expired(cutoff)]}
        if rule.action is Action.DELETE:
            return (await col.delete_many(selected, session=tx.session)).deleted_count
        changed = 0
        for doc_id in ids:
            one = {"$and": [{"_id": doc_id}, rule.expired(cutoff)]}
            result = await col.update_one(one, {"$set": rule.scrubbed(doc_id, now)}, session=tx.session)
            changed += result.modified_count
        return changed

    return await store.transaction(work)


async def enforce(
    store: Store,
    rules: Sequence[Rule],
    days: Mapping[str, int],
    *,
    clock: Clock = system_clock,
    batch: int = DEFAULT_BATCH,
) -> dict[str, int]:
    """One round: every configured record type's expired records deleted or anonymised.

    Returns how many records of each type were; audited as ``RETENTION <record type>``."""
    configured = periods(rules, days)
    done: dict[str, int] = {}
    for rule in rules:
        period = configured.get(rule.record_type)
        if period is None:
            continue
        now = now_millis(clock)
        operation = audit.operation_var.set(f"RETENTION {rule.record_type}")
        try:
            total = 0
            while n := await _batch(store, rule, now - period, now, batch):
                total += n
        finally:
            audit.operation_var.reset(operation)
        done[rule.record_type] = total
    return done


def retention_job(
    store: Store,
    rules: Sequence[Rule],
    days: Mapping[str, int],
    every_seconds: float,
    *,
    clock: Clock = system_clock,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A runtime background job enforcing ``rules`` every ``every_seconds`` (first after one wait)."""
    periods(rules, days)  # a misconfigured type fails at startup, not in the first round

    async def enforce_retention() -> None:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                done = await enforce(store, rules, days, clock=clock)
                if any(done.values()):
                    log.info("retention: %s", done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the job outlives a failed round (database away): next round
                log.warning("retention round failed (%s); retrying next round", exc)

    return enforce_retention
