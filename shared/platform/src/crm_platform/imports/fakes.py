"""The import repository in memory, for departments' handler unit tests (never in production)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from pymongo.errors import DuplicateKeyError

from crm_platform.actor import Actor
from crm_platform.imports.domain import Checkpoint, Counts, ImportJob, Rejection, StaleCheckpoint

J = TypeVar("J", bound=ImportJob[Any])


class InMemoryImports(Generic[J]):
    def __init__(self) -> None:
        self.items: dict[str, J] = {}
        self.rejections: list[Rejection] = []
        self.mappings: dict[str, dict[str, str]] = {}
        self.batches: dict[tuple[str, int], tuple[Checkpoint, Counts]] = {}  # (job, start) -> end, counts

    async def get(self, job_id: str) -> J | None:
        return self.items.get(job_id)

    async def add(self, job: J) -> None:
        if job.id in self.items:
            raise DuplicateKeyError(f"import {job.id!r} exists")
        self.items[job.id] = job

    async def save(self, job: J) -> None:
        self.items[job.id] = job

    async def add_rejections(self, rejections: Sequence[Rejection]) -> None:
        self.rejections.extend(rejections)

    async def add_batch(self, job_id: str, at: Checkpoint, to: Checkpoint, counts: Counts) -> None:
        if (job_id, at.offset) in self.batches:
            raise StaleCheckpoint(f"import {job_id}: the batch from {at} is stored already")
        self.batches[(job_id, at.offset)] = (to, counts)

    async def save_mapping(self, name: str, columns: dict[str, str], by: Actor, at: datetime) -> None:
        self.mappings[name] = dict(columns)
