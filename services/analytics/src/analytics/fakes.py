"""In-memory implementations of analytics' repositories, for unit tests (never used in production)."""

from __future__ import annotations

import copy

from analytics.domain.snapshot import KpiReport, Reconciliation, Snapshot


class InMemorySnapshots:
    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshot = snapshot
        self.saves = 0
        self.fail: Exception | None = None  # raised by every call, like an unreachable database

    async def latest(self) -> Snapshot | None:
        self._maybe_fail()
        return copy.deepcopy(self.snapshot)

    async def save(self, snapshot: Snapshot) -> None:
        self._maybe_fail()
        self.snapshot = copy.deepcopy(snapshot)
        self.saves += 1

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail


class InMemoryReconciliations:
    def __init__(self, reconciliation: Reconciliation | None = None) -> None:
        self.reconciliation = reconciliation

    async def latest(self) -> Reconciliation | None:
        return copy.deepcopy(self.reconciliation)

    async def save(self, reconciliation: Reconciliation) -> None:
        self.reconciliation = copy.deepcopy(reconciliation)


class InMemoryKpis:
    def __init__(self, report: KpiReport | None = None) -> None:
        self.report = report
        self.saves = 0

    async def latest(self) -> KpiReport | None:
        return copy.deepcopy(self.report)

    async def save(self, report: KpiReport) -> None:
        self.report = copy.deepcopy(report)
        self.saves += 1
