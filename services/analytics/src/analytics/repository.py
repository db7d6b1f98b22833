"""What analytics' handlers need from storage: one small interface per thing it keeps.

Analytics keeps three single documents, each replaced whole by one write and
emitting no event, so its handlers need no transaction and no unit of work: they
take the repository. ``store.py`` implements these over MongoDB, ``fakes.py`` in memory.
"""

from __future__ import annotations

from typing import Protocol

from analytics.domain.snapshot import KpiReport, Reconciliation, Snapshot


class SnapshotRepository(Protocol):
    async def latest(self) -> Snapshot | None: ...

    async def save(self, snapshot: Snapshot) -> None: ...


class ReconciliationRepository(Protocol):
    async def latest(self) -> Reconciliation | None: ...

    async def save(self, reconciliation: Reconciliation) -> None: ...


class KpiRepository(Protocol):
    async def latest(self) -> KpiReport | None: ...

    async def save(self, report: KpiReport) -> None: ...
