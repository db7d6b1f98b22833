"""The import repository in memory, for departments' handler unit tests (never in production)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from pymongo.errors import DuplicateKeyError

from crm_platform.actor import Actor
from crm_platform.imports.domain import ImportJob, Rejection

J = TypeVar("J", bound=ImportJob[Any])


class InMemoryImports(Generic[J]):
    def __init__(self) -> None:
        self.items: dict[str, J] = {}
        self.rejections: list[Rejection] = []
        self.mappings: dict[str, dict[str, str]] = {}

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

    async def save_mapping(self, name: str, columns: dict[str, str], by: Actor, at: datetime) -> None:
        self.mappings[name] = dict(columns)
