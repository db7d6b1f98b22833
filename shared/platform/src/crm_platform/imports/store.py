"""An import's storage in the importing department's own database (shared by leads and sales).

- ``import_jobs``        every import: format, mapping, state, checkpoint, counts, lease, upload
- ``import_chunks``      an import's file as it was uploaded, in 1 MiB pieces (dropped when done)
- ``import_rejections``  the rows each import rejected, with why (its error report)
- ``import_mappings``    saved column mappings (``_id`` = name)
- ``import_batches``     the batches stored by a department whose batches run two at a time
                         (leads): one record per batch, ``_id`` = job and starting offset, with
                         where it ends and its counts; folded into the job's checkpoint and
                         counts in file order after each commit (dropped when done)

A department's job type (its fields and its defaults) is stored through a :class:`JobCodec`;
everything else is the same for every department. The job's own changes go through
:class:`MongoImports` in the unit of work's transaction (audited); the file's chunks, the
worker's lease and the upload's claim are single-document writes outside any transaction
(a lease must outlive an aborted batch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from crm_platform.actor import Actor
from crm_platform.imports.domain import (
    Checkpoint,
    Counts,
    ImportFormat,
    ImportJob,
    ImportState,
    Rejection,
    StaleCheckpoint,
)
from crm_platform.mongo import Tx

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
J = TypeVar("J", bound=ImportJob[Any])

IMPORT_JOBS = "import_jobs"
IMPORT_CHUNKS = "import_chunks"
IMPORT_REJECTIONS = "import_rejections"
IMPORT_MAPPINGS = "import_mappings"
IMPORT_BATCHES = "import_batches"
CHUNK_BYTES = 1024 * 1024


async def ensure_indexes(db: Db) -> None:
    await db[IMPORT_JOBS].create_index([("created_at", DESCENDING), ("_id", DESCENDING)], name="newest")
    await db[IMPORT_JOBS].create_index([("state", ASCENDING), ("lease_until", ASCENDING)], name="claimable")
    await db[IMPORT_CHUNKS].create_index(
        [("job_id", ASCENDING), ("n", ASCENDING)], unique=True, name="by_job"
    )
    await db[IMPORT_REJECTIONS].create_index([("job_id", ASCENDING), ("row", ASCENDING)], name="by_job")
    # Made here, not by the first batch's insert: two batches' transactions creating the same
    # collection at once conflict, and one of them would be redone whole.
    await db[IMPORT_BATCHES].create_index("job_id", name="by_job")


@dataclass(frozen=True)
class JobCodec(Generic[J]):
    """How one department's job type is stored: its class and its defaults to and from a document."""

    job_type: type[J]
    defaults_to_doc: Callable[[Any], Doc]
    defaults_from_doc: Callable[[Doc], Any]

    def to_doc(self, job: J) -> Doc:
        """Every field of the job but its lease (``lease_owner``/``lease_until``: the worker's)."""
        cp, n = job.checkpoint, job.counts
        return {
            "_id": job.id,
            "format": job.format.value,
            "mapping": dict(job.mapping) if job.mapping is not None else None,
            "mapping_name": job.mapping_name,
            "defaults": self.defaults_to_doc(job.defaults),
            "created_by": {"user_id": job.created_by, "username": job.created_by_name},
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "state": job.state.value,
            "file_name": job.file_name,
            "size": job.size,
            "header": list(job.header),
            "checkpoint": _checkpoint_doc(cp),
            "counts": _counts_doc(n),
            "error": job.error,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }

    def from_doc(self, d: Doc) -> J:
        cp, n, by = d["checkpoint"], d["counts"], d["created_by"]
        return self.job_type(
            id=d["_id"],
            format=ImportFormat(d["format"]),
            mapping=d.get("mapping"),
            mapping_name=d.get("mapping_name"),
            defaults=self.defaults_from_doc(d.get("defaults") or {}),
            created_by=by["user_id"],
            created_by_name=by["username"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            state=ImportState(d["state"]),
            file_name=d.get("file_name"),
            size=int(d.get("size", 0)),
            header=tuple(d.get("header") or ()),
            checkpoint=Checkpoint(int(cp["offset"]), int(cp["row"]), int(cp["line"])),
            counts=Counts(int(n["read"]), int(n["accepted"]), int(n["merged"]), int(n["rejected"])),
            error=d.get("error"),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            attempts=int(d.get("attempts") or 0),
            last_error=d.get("last_error"),
        )


def batch_id(job_id: str, at: Checkpoint) -> str:
    """A batch record's ``_id``: its job and where it starts (one record per start)."""
    return f"{job_id}:{at.offset:015d}"


def _checkpoint_doc(cp: Checkpoint) -> Doc:
    return {"offset": cp.offset, "row": cp.row, "line": cp.line}


def _counts_doc(n: Counts) -> Doc:
    return {"read": n.read, "accepted": n.accepted, "merged": n.merged, "rejected": n.rejected}


def rejection_to_doc(r: Rejection) -> Doc:
    return {"job_id": r.job_id, "row": r.row, "line": r.line, "raw": r.raw, "reason": r.reason}


class MongoImports(Generic[J]):
    """The import repository over one transaction (``ImportRepository`` of the department's unit)."""

    def __init__(self, tx: Tx, codec: JobCodec[J]) -> None:
        self.tx, self.codec = tx, codec

    async def get(self, job_id: str) -> J | None:
        doc = await self.tx.db[IMPORT_JOBS].find_one({"_id": job_id}, session=self.tx.session)
        return self.codec.from_doc(doc) if doc else None

    async def add(self, job: J) -> None:
        await self.tx.db[IMPORT_JOBS].insert_one(self.codec.to_doc(job), session=self.tx.session)

    async def save(self, job: J) -> None:
        doc = self.codec.to_doc(job)
        del doc["_id"]
        await self.tx.db[IMPORT_JOBS].update_one({"_id": job.id}, {"$set": doc}, session=self.tx.session)

    async def save_mapping(self, name: str, columns: dict[str, str], by: Actor, at: datetime) -> None:
        doc = {
            "columns": columns,
            "changed_by": {"user_id": by.user_id, "username": by.display_name},
            "changed_at": at,
        }
        await self.tx.db[IMPORT_MAPPINGS].update_one(
            {"_id": name}, {"$set": doc}, upsert=True, session=self.tx.session
        )

    async def add_batch(self, job_id: str, at: Checkpoint, to: Checkpoint, counts: Counts) -> None:
        """The batch of ``job_id`` from ``at`` to ``to`` is stored, with its counts: its record,
        in the batch's transaction instead of the job's checkpoint (the worker folds it into the
        job after the commit, :func:`fold_batch`). ``StaleCheckpoint`` when a batch starting at
        ``at`` was stored already (another worker took the job over)."""
        doc = {
            "_id": batch_id(job_id, at),
            "job_id": job_id,
            "to": _checkpoint_doc(to),
            "counts": _counts_doc(counts),
        }
        try:
            await self.tx.db[IMPORT_BATCHES].insert_one(doc, session=self.tx.session)
        except DuplicateKeyError:
            raise StaleCheckpoint(f"import {job_id}: the batch from {at} is stored already") from None

    async def add_rejections(self, rejections: Sequence[Rejection]) -> None:
        if rejections:
            docs = [rejection_to_doc(r) for r in rejections]
            await self.tx.db[IMPORT_REJECTIONS].insert_many(docs, session=self.tx.session)


# -- the file, the lease and the upload's claim: outside any transaction -----------------


async def drop_chunks(db: Db, job_id: str) -> None:
    await db[IMPORT_CHUNKS].delete_many({"job_id": job_id})
    await db[IMPORT_BATCHES].delete_many({"job_id": job_id})


async def stored_batch(db: Db, job_id: str, at: Checkpoint) -> tuple[Checkpoint, Counts] | None:
    """Where the stored batch starting at ``at`` ends and its counts (None: none is stored)."""
    doc = await db[IMPORT_BATCHES].find_one({"_id": batch_id(job_id, at)})
    if doc is None:
        return None
    to, n = doc["to"], doc["counts"]
    return (
        Checkpoint(int(to["offset"]), int(to["row"]), int(to["line"])),
        Counts(int(n["read"]), int(n["accepted"]), int(n["merged"]), int(n["rejected"])),
    )


async def fold_batch(
    db: Db,
    job_id: str,
    owner: str,
    at: Checkpoint,
    to: Checkpoint,
    counts: Counts,
    now: datetime,
    lease: datetime,
) -> bool:
    """A committed batch record into its job: the checkpoint moves from ``at`` to ``to``, its
    counts are added, and this worker's lease runs until ``lease`` (progress: the attempts start
    again from zero). Only from ``at`` (a batch is folded once) and only by the lease's owner:
    False otherwise (another worker has the job; it folds what this one stored)."""
    added = {f"counts.{k}": {"$add": [f"$counts.{k}", v]} for k, v in _counts_doc(counts).items()}
    result = await db[IMPORT_JOBS].update_one(
        {
            "_id": job_id,
            "lease_owner": owner,
            "checkpoint.offset": at.offset,
            "state": {"$in": [ImportState.QUEUED.value, ImportState.RUNNING.value]},
        },
        [
            {
                "$set": {
                    "checkpoint": {"$literal": _checkpoint_doc(to)},
                    **added,
                    "state": {"$literal": ImportState.RUNNING.value},
                    "started_at": {"$ifNull": ["$started_at", now]},
                    "updated_at": now,
                    "lease_until": lease,
                    "attempts": 0,
                }
            }
        ],
    )
    return result.matched_count == 1


async def put_chunk(db: Db, job_id: str, n: int, data: bytes) -> None:
    await db[IMPORT_CHUNKS].insert_one({"_id": f"{job_id}:{n:09d}", "job_id": job_id, "n": n, "data": data})


async def read_file(db: Db, job_id: str, offset: int) -> AsyncIterator[bytes]:
    """The stored file from byte ``offset`` on, a chunk at a time (a few chunks in memory)."""
    first, skip = divmod(offset, CHUNK_BYTES)
    cursor = db[IMPORT_CHUNKS].find({"job_id": job_id, "n": {"$gte": first}}).sort("n", ASCENDING)
    async for doc in cursor.batch_size(4):
        data = bytes(doc["data"])
        yield data[skip:] if doc["n"] == first else data


async def claim_import(db: Db, codec: JobCodec[J], owner: str, now: datetime, lease: timedelta) -> J | None:
    """Take a queued or running import whose lease is free or expired (one worker at a time)."""
    doc = await db[IMPORT_JOBS].find_one_and_update(
        {
            "state": {"$in": [ImportState.QUEUED.value, ImportState.RUNNING.value]},
            "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}],
        },
        {"$set": {"lease_owner": owner, "lease_until": now + lease}, "$inc": {"attempts": 1}},
        sort=[("created_at", ASCENDING)],
        return_document=ReturnDocument.AFTER,
    )
    return codec.from_doc(doc) if doc else None


async def renew_lease(db: Db, job_id: str, owner: str, until: datetime) -> bool:
    """Extend this worker's lease after a committed batch (progress: the attempts start again
    from zero); False when another worker took the job meanwhile."""
    result = await db[IMPORT_JOBS].update_one(
        {"_id": job_id, "lease_owner": owner}, {"$set": {"lease_until": until, "attempts": 0}}
    )
    return result.matched_count == 1


async def note_import_failure(db: Db, job_id: str, owner: str, reason: str) -> None:
    """Why this worker's attempt at the job failed (shown by GET /imports/{id} while it retries)."""
    await db[IMPORT_JOBS].update_one({"_id": job_id, "lease_owner": owner}, {"$set": {"last_error": reason}})


async def release_lease(db: Db, job_id: str, owner: str) -> None:
    await db[IMPORT_JOBS].update_one(
        {"_id": job_id, "lease_owner": owner}, {"$set": {"lease_owner": None, "lease_until": None}}
    )


async def take_upload(db: Db, job_id: str, upload_id: str, now: datetime, stale_after: timedelta) -> bool:
    """Become the one upload of the job's file: False while another is storing it (it stored
    something less than ``stale_after`` ago). The job must exist."""
    result = await db[IMPORT_JOBS].update_one(
        {"_id": job_id, "$or": [{"upload_until": None}, {"upload_until": {"$lt": now}}]},
        {"$set": {"upload_owner": upload_id, "upload_until": now + stale_after}},
    )
    return result.matched_count == 1


async def renew_upload(db: Db, job_id: str, upload_id: str, until: datetime) -> bool:
    """The upload stored another chunk; False when another upload took over (this one was stale)."""
    result = await db[IMPORT_JOBS].update_one(
        {"_id": job_id, "upload_owner": upload_id}, {"$set": {"upload_until": until}}
    )
    return result.matched_count == 1


async def release_upload(db: Db, job_id: str, upload_id: str) -> None:
    await db[IMPORT_JOBS].update_one(
        {"_id": job_id, "upload_owner": upload_id}, {"$set": {"upload_owner": None, "upload_until": None}}
    )


# -- read side (the API) -----------------------------------------------------------------


async def get_import(db: Db, codec: JobCodec[J], job_id: str) -> J | None:
    doc = await db[IMPORT_JOBS].find_one({"_id": job_id})
    return codec.from_doc(doc) if doc else None


async def list_imports(db: Db, codec: JobCodec[J], limit: int) -> list[J]:
    docs = (
        await db[IMPORT_JOBS]
        .find({})
        .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
        .to_list()
    )
    return [codec.from_doc(d) for d in docs]


async def rejections(db: Db, job_id: str) -> AsyncIterator[Rejection]:
    """An import's rejected rows in file order, from a cursor (the error report, streamed)."""
    cursor = db[IMPORT_REJECTIONS].find({"job_id": job_id}).sort("row", ASCENDING)
    async for d in cursor:
        yield Rejection(d["job_id"], int(d["row"]), int(d["line"]), d["raw"], d["reason"])


async def get_mapping(db: Db, name: str) -> dict[str, str] | None:
    doc = await db[IMPORT_MAPPINGS].find_one({"_id": name})
    return dict(doc["columns"]) if doc else None


async def list_mappings(db: Db) -> list[Doc]:
    return await db[IMPORT_MAPPINGS].find({}).sort("_id", ASCENDING).limit(500).to_list()
