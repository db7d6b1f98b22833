"""The audit log on the real mongod: written in the change's transaction by every write method,
named after the user, the event or the system behind it, append-only, queried with indexes."""

from __future__ import annotations

import gc
import re
import uuid
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import pytest_asyncio
from crm_contracts import envelope_for
from crm_contracts.events.sales import LeadVerdictV1
from crm_platform import audit
from crm_platform.actor import Actor
from crm_platform.mongo import Store, Tx, causation_var, connect
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.collection import ReturnDocument

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    client = connect(mongodb_uri, "audit-test")
    s = Store(client, f"t_audit_{uuid.uuid4().hex[:8]}", "sales")
    await s.ensure_platform_indexes()
    yield s
    await client.drop_database(s.db.name)
    await client.close()


async def entries(store: Store, record_id: str) -> list[dict[str, Any]]:
    return (
        await store.db[audit.AUDIT_LOG].find({"record.id": record_id}).sort([("at", 1), ("_id", 1)]).to_list()
    )


def as_user(user_id: str = "u-1") -> Any:
    return audit.actor_var.set(Actor(user_id, "uma", frozenset({"sales_rep"})))


async def test_every_write_method_is_recorded_with_before_and_after(store: Store) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"

    async def work(tx: Tx) -> None:
        deals = tx.db["deals"]
        await deals.insert_one({"_id": a, "stage": "new", "amount": 1}, session=tx.session)
        await deals.insert_many([{"_id": b, "stage": "new"}], session=tx.session)
        await deals.update_one({"_id": a}, {"$set": {"stage": "won"}}, session=tx.session)
        await deals.replace_one({"_id": a}, {"stage": "won", "amount": 2}, session=tx.session)
        await deals.update_many({"_id": {"$in": [a, b]}}, {"$inc": {"n": 1}}, session=tx.session)
        after = await deals.find_one_and_update(
            {"_id": b}, {"$set": {"stage": "lost"}}, return_document=ReturnDocument.AFTER, session=tx.session
        )
        assert after is not None
        assert after["stage"] == "lost"
        await deals.bulk_write([ReplaceOne({"_id": b}, {"stage": "open"})], session=tx.session)
        await deals.delete_one({"_id": b}, session=tx.session)

    token = as_user()
    try:
        await store.transaction(work)
    finally:
        audit.actor_var.reset(token)
    found = await entries(store, a)
    changes_a = [(e["action"], {c["field"]: (c["before"], c["after"]) for c in e["changes"]}) for e in found]
    assert changes_a == [
        ("insert", {"stage": (None, "new"), "amount": (None, 1)}),
        ("update", {"stage": ("new", "won")}),
        ("update", {"amount": (1, 2)}),
        ("update", {"n": (None, 1)}),
    ]
    actions_b = [e["action"] for e in await entries(store, b)]
    assert actions_b == ["insert", "update", "update", "update", "delete"]
    first = (await entries(store, a))[0]
    assert first["actor"] == {"type": "user", "user_id": "u-1", "username": "uma", "roles": ["sales_rep"]}
    assert first["record"] == {"type": "deals", "id": a}
    assert first["service"] == "sales"


async def test_an_insert_unless_found_upsert_is_an_insert_when_new_and_nothing_when_found(
    store: Store,
) -> None:
    """``$setOnInsert`` alone (a capture's dedupe and insert in one round trip): the inserted
    document is known without reading it back; a matched one is unchanged, so no entry."""
    doc_id, email = f"c-{uuid.uuid4().hex[:6]}", f"{uuid.uuid4().hex[:6]}@example.com"
    answers: list[Any] = []

    async def work(tx: Tx) -> None:
        for attempt in ("first", "second"):
            doc = {"_id": f"{doc_id}-{attempt}", "email": email, "name": attempt, "phone": None}
            answers.append(
                await tx.db["contacts"].find_one_and_update(
                    {"email": email},
                    {"$setOnInsert": doc},
                    upsert=True,
                    return_document=ReturnDocument.BEFORE,
                    session=tx.session,
                )
            )
        # The found document is remembered: a write after it records the change from it.
        await tx.db["contacts"].update_one({"email": email}, {"$set": {"name": "third"}}, session=tx.session)

    token = as_user()
    try:
        await store.transaction(work)
    finally:
        audit.actor_var.reset(token)
    assert answers[0] is None, "nothing matched: inserted"
    assert answers[1] == {"_id": f"{doc_id}-first", "email": email, "name": "first", "phone": None}
    found = await entries(store, f"{doc_id}-first")
    changes = [(e["action"], {c["field"]: (c["before"], c["after"]) for c in e["changes"]}) for e in found]
    assert changes == [
        ("insert", {"email": (None, email), "name": (None, "first")}),
        ("update", {"name": ("first", "third")}),
    ]
    assert await entries(store, f"{doc_id}-second") == []
    assert await store.db["contacts"].count_documents({"email": email}) == 1


async def test_an_aborted_transaction_leaves_neither_change_nor_entry(store: Store) -> None:
    doc_id = f"x-{uuid.uuid4().hex[:6]}"

    async def work(tx: Tx) -> None:
        await tx.db["deals"].insert_one({"_id": doc_id}, session=tx.session)
        raise RuntimeError("the rule said no")

    with pytest.raises(RuntimeError):
        await store.transaction(work)
    assert await store.db["deals"].find_one({"_id": doc_id}) is None
    assert await entries(store, doc_id) == []


async def test_a_change_made_by_an_event_names_the_event_and_its_journey(store: Store) -> None:
    doc_id = f"lead-{uuid.uuid4().hex[:6]}"
    event = LeadVerdictV1.model_validate({"lead_id": doc_id, "verdict": "accepted", "decided_by": "rep-1"})
    env = envelope_for(event, source="sales", correlation_id="journey-42")

    async def work(tx: Tx) -> None:
        await tx.db["leads"].insert_one({"_id": doc_id, "status": "accepted"}, session=tx.session)

    token = causation_var.set(env)
    try:
        await store.transaction(work)
    finally:
        causation_var.reset(token)
    [entry] = await entries(store, doc_id)
    assert entry["actor"] == {
        "type": "event",
        "user_id": "event:sales",
        "source": "sales",
        "event_type": "lead.verdict",
        "event_id": str(env.event_id),
    }
    assert entry["operation"] == "event lead.verdict v1"
    assert entry["correlation_id"] == "journey-42"


async def test_bookkeeping_writes_outside_the_tx_and_unchanged_saves_are_not_records(store: Store) -> None:
    doc_id, outside = f"s-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    await store.db["deals"].insert_one({"_id": doc_id, "stage": "new"})

    async def work(tx: Tx) -> None:
        counters = tx.db["counters"]
        await counters.update_one({"_id": doc_id}, {"$inc": {"v": 1}}, upsert=True, session=tx.session)
        await tx.db["deals"].update_one({"_id": outside}, {"$set": {"a": 1}}, upsert=True)  # not in the tx
        await tx.db["deals"].replace_one({"_id": doc_id}, {"stage": "new"}, session=tx.session)

    await store.transaction(work)
    assert await entries(store, doc_id) == []
    assert await entries(store, outside) == []
    assert (await store.db["counters"].find_one({"_id": doc_id}) or {}).get("v") == 1


async def test_the_audit_log_is_append_only_for_service_code(store: Store) -> None:
    async def tamper(tx: Tx) -> None:
        await tx.db[audit.AUDIT_LOG].delete_many({}, session=tx.session)

    async def forge(tx: Tx) -> None:
        await tx.db[audit.AUDIT_LOG].insert_one({"_id": "forged"}, session=tx.session)

    for work in (tamper, forge):
        with pytest.raises(audit.AuditLogIsAppendOnly):
            await store.transaction(work)
    assert await store.db[audit.AUDIT_LOG].find_one({"_id": "forged"}) is None


async def test_a_bulk_write_records_each_document_once_from_before_to_after(store: Store) -> None:
    a, b, c, d = (f"{x}-{uuid.uuid4().hex[:6]}" for x in "abcd")
    await store.db["deals"].insert_many([{"_id": a, "n": 1}, {"_id": b, "n": 1}, {"_id": d, "n": 1}])

    async def work(tx: Tx) -> None:
        await tx.db["deals"].bulk_write(
            [
                UpdateOne({"_id": a}, {"$inc": {"n": 1}}),
                UpdateOne({"_id": a}, {"$inc": {"n": 1}}),
                ReplaceOne({"_id": b}, {"n": 5}),
                UpdateOne({"name": c}, {"$set": {"n": 9}}, upsert=True),
                InsertOne({"_id": c, "n": 0}),
                DeleteOne({"_id": d}),
            ],
            session=tx.session,
        )

    await store.transaction(work)
    [ea], [eb], [ed] = await entries(store, a), await entries(store, b), await entries(store, d)
    assert ea["changes"] == [{"field": "n", "before": 1, "after": 3}]
    assert eb["changes"] == [{"field": "n", "before": 1, "after": 5}]
    assert ed["action"] == "delete"
    [ec] = await entries(store, c)
    assert ec["action"] == "insert"
    upserted = await store.db[audit.AUDIT_LOG].find_one({"changes.after": c, "action": "insert"})
    assert upserted is not None


def _count_reads(monkeypatch: pytest.MonkeyPatch, reads: list[Any]) -> None:
    """From now on, every read of records by id an audited collection makes is put in ``reads``."""
    real = audit.AuditedCollection._by_ids

    async def counted(self: audit.AuditedCollection, ids: Any, session: Any) -> dict[Any, Any]:
        reads.append(list(ids))
        return await real(self, ids, session)

    monkeypatch.setattr(audit.AuditedCollection, "_by_ids", counted)


async def test_a_bulk_write_of_records_read_to_change_and_replaced_by_id_reads_nothing_more(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read with ``find_to_change``, replaced and inserted by ``_id``: the entries come from the
    remembered states and the documents sent, with no read around the write (a tracker's batch
    of qualifications: it read every lead three times)."""
    a, b, c = (f"{x}-{uuid.uuid4().hex[:6]}" for x in "abc")
    await store.db["deals"].insert_many([{"_id": a, "n": 1, "stage": "new"}, {"_id": b, "n": 2}])
    reads: list[Any] = []

    async def work(tx: Tx) -> None:
        deals = cast(audit.AuditedCollection, tx.db["deals"])
        await deals.find_to_change({"_id": {"$in": [a, b]}}, session=tx.session)
        _count_reads(monkeypatch, reads)
        ghost = ReplaceOne({"_id": f"ghost-{a}"}, {"n": 0})  # replaces nothing: no entry
        ops = [
            ReplaceOne({"_id": a}, {"n": 2}),
            ReplaceOne({"_id": b}, {"n": 2}),
            InsertOne({"_id": c, "n": 3}),
            ghost,
        ]
        await deals.bulk_write(ops, session=tx.session)

    await store.transaction(work)
    assert reads == [[f"ghost-{a}"]], (
        "only the unknown one read before, nothing after: the rest remembered or sent"
    )
    [ea], eb, [ec] = await entries(store, a), await entries(store, b), await entries(store, c)
    assert ea["changes"] == [
        {"field": "n", "before": 1, "after": 2},
        {"field": "stage", "before": "new", "after": None},
    ]
    assert eb == [], "a replacement that changed nothing is not a change"
    assert (ec["action"], ec["changes"]) == ("insert", [{"field": "n", "before": None, "after": 3}])
    assert await entries(store, f"ghost-{a}") == []


async def test_a_bulk_write_setting_fields_of_records_read_to_change_reads_nothing_after(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``UpdateOne`` by ``_id`` that only sets and removes top-level fields of a record the
    transaction read to change is its own state after (a consumer's assignment of a lead: two
    fields set); any other update is still read back after the write."""
    a, b = (f"{x}-{uuid.uuid4().hex[:6]}" for x in "ab")
    await store.db["deals"].insert_many([{"_id": a, "n": 1, "stage": "new"}, {"_id": b, "n": 2}])
    reads: list[Any] = []

    async def work(tx: Tx) -> None:
        deals = cast(audit.AuditedCollection, tx.db["deals"])
        await deals.find_to_change({"_id": {"$in": [a, b]}}, session=tx.session)
        _count_reads(monkeypatch, reads)
        await deals.bulk_write(
            [UpdateOne({"_id": a}, {"$set": {"n": 5, "rep": "rhea"}, "$unset": {"stage": ""}})],
            session=tx.session,
        )
        await deals.bulk_write([UpdateOne({"_id": b}, {"$inc": {"n": 1}})], session=tx.session)

    await store.transaction(work)
    assert [r for r in reads if r] == [[b]], "the $set of a known record is not read back; the $inc is"
    [ea], [eb] = await entries(store, a), await entries(store, b)
    assert ea["changes"] == [
        {"field": "n", "before": 1, "after": 5},
        {"field": "rep", "before": None, "after": "rhea"},
        {"field": "stage", "before": "new", "after": None},
    ]
    assert await store.db["deals"].find_one({"_id": a}) == {"_id": a, "n": 5, "rep": "rhea"}
    assert eb["changes"] == [{"field": "n", "before": 2, "after": 3}]


async def test_a_batch_insert_is_one_entry_naming_each_record_and_read_back_per_record(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``one_entry_per_batch`` (the bulk paths): one stored entry per batch of records, each
    record found by its id, by the user and in the export with its own after-values."""
    monkeypatch.setattr(audit, "BATCH_ENTRY_RECORDS", 2)
    run = uuid.uuid4().hex[:6]
    ids = [f"bl-{run}-{k}" for k in range(3)]
    user = f"u-batch-{run}"

    async def work(tx: Tx) -> None:
        with audit.one_entry_per_batch():
            docs = [
                {"_id": i, "email": f"{i}@example.com", "score": k, "note": None, "token": "s3cret"}
                for k, i in enumerate(ids)
            ]
            await tx.db["bulk_leads"].insert_many(docs, session=tx.session)

    token = as_user(user)
    try:
        await store.transaction(work)
    finally:
        audit.actor_var.reset(token)

    stored = await store.db[audit.AUDIT_LOG].find({"actor.user_id": user}).sort("_id", 1).to_list()
    assert [e["record"]["id"] for e in stored] == [ids[:2], ids[2:]], "one entry per batch of at most 2"
    assert all("changes" not in e and e["action"] == "insert" for e in stored)

    second = (await audit.history(store.db, "bulk_leads", ids[1], limit=10)).items
    assert [(e["record"], e["actor"]["user_id"], e["action"]) for e in second] == [
        ({"type": "bulk_leads", "id": ids[1]}, user, "insert")
    ]
    assert second[0]["changes"] == [
        {"field": "email", "before": None, "after": f"{ids[1]}@example.com"},
        {"field": "score", "before": None, "after": 1},
        {"field": "token", "before": None, "after": audit.REDACTED},
    ], "as an insert's own entry lists them: null left out, secrets redacted"
    assert "s3cret" not in str(stored), "never stored"
    assert second[0]["batch"] == {"id": stored[0]["_id"], "size": 2}

    by_user = (await audit.query(store.db, audit.Filters(user_id=user), limit=10)).items
    assert sorted(e["record"]["id"] for e in by_user) == ids, "each record once, as its own entry"
    assert len({e["_id"] for e in by_user}) == 3
    rows = [row async for row in audit.csv_rows(store.db, audit.Filters(user_id=user))]
    assert sorted(r[audit.CSV_COLUMNS.index("record_id")] for r in rows) == ids


async def test_a_named_batch_insert_stores_no_values_and_reads_back_as_inserted(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection whose inserts are named (``audit.inserts_named``: sales' inbox): the batch
    entry stores each record's id, not its values, and every read (history, by user, export)
    shows each record's insert as a copy would have: the stored record with every later
    change undone (an update, a removed field, a delete, erasure)."""
    monkeypatch.setattr(audit, "NAMED_INSERTS", {"named_items"})
    run = uuid.uuid4().hex[:6]
    ids = [f"nm-{run}-{k}" for k in range(4)]
    user = f"u-named-{run}"
    docs = [{"_id": i, "email": f"{i}@example.com", "score": k, "tags": ["a"], "token": "s3cret"}
            for k, i in enumerate(ids)]  # fmt: skip

    async def insert(tx: Tx) -> None:
        with audit.one_entry_per_batch():
            await tx.db["named_items"].insert_many([dict(d) for d in docs], session=tx.session)

    async def change(tx: Tx) -> None:
        items = tx.db["named_items"]
        await items.update_one(
            {"_id": ids[0]}, {"$set": {"score": 9}, "$unset": {"tags": ""}}, session=tx.session
        )
        await items.update_one({"_id": ids[0]}, {"$set": {"score": 10, "stage": "won"}}, session=tx.session)
        await items.delete_one({"_id": ids[1]}, session=tx.session)
        await items.replace_one({"_id": ids[2]}, {"email": "[erased]", "score": 2}, session=tx.session)
        await audit.erase_values(tx.db, tx.session, [("named_items", ids[2])], re.compile(re.escape(ids[2])))

    token = as_user(user)
    try:
        await store.transaction(insert)
        await store.transaction(change)
    finally:
        audit.actor_var.reset(token)

    [stored] = await store.db[audit.AUDIT_LOG].find({"record.id": ids[0], "action": "insert"}).to_list()
    assert stored["records"] == [{"id": i} for i in ids], "named, not copied"
    assert "example.com" not in str(stored)

    def inserted(k: int, email: str) -> list[dict[str, Any]]:
        fields = {"email": email, "score": k, "tags": ["a"], "token": audit.REDACTED}
        return [{"field": f, "before": None, "after": v} for f, v in sorted(fields.items())]

    for k, email in [(0, f"{ids[0]}@example.com"), (1, f"{ids[1]}@example.com"), (2, "[erased]@example.com"),
                     (3, f"{ids[3]}@example.com")]:  # fmt: skip
        history = (await audit.history(store.db, "named_items", ids[k], limit=10)).items
        assert history[-1]["action"] == "insert"
        assert history[-1]["changes"] == inserted(k, email), k
        assert "named" not in history[-1]
        assert history[-1]["batch"]["size"] == 4
    by_user = (await audit.query(store.db, audit.Filters(user_id=user), limit=20)).items
    shown = {e["record"]["id"]: e["changes"] for e in by_user if e["action"] == "insert"}
    assert [shown[ids[k]] == inserted(k, f"{ids[k]}@example.com") for k in (0, 1, 3)] == [True] * 3
    rows = [row async for row in audit.csv_rows(store.db, audit.Filters(user_id=user))]
    changes = audit.CSV_COLUMNS.index("changes")
    assert sum(f"{i}@example.com" in r[changes] for r in rows for i in (ids[0], ids[3])) >= 2
    assert "s3cret" not in str(rows)
    assert f"{ids[2]}@example.com" not in str(rows)


async def test_erasure_rewrites_the_erased_records_values_in_a_batch_entry(store: Store) -> None:
    run = uuid.uuid4().hex[:6]
    ids = [f"er-{run}-{k}" for k in range(2)]

    async def write(tx: Tx) -> None:
        with audit.one_entry_per_batch():
            docs = [{"_id": i, "email": f"{i}@example.com"} for i in ids]
            await tx.db["bulk_leads"].insert_many(docs, session=tx.session)

    await store.transaction(write)

    async def erase(tx: Tx) -> int:
        return await audit.erase_values(
            tx.db, tx.session, [("bulk_leads", ids[0])], re.compile(re.escape(ids[0]))
        )

    assert await store.transaction(erase) == 1
    [erased] = (await audit.history(store.db, "bulk_leads", ids[0], limit=5)).items
    [kept] = (await audit.history(store.db, "bulk_leads", ids[1], limit=5)).items
    assert erased["changes"] == [{"field": "email", "before": None, "after": "[erased]@example.com"}]
    assert kept["changes"] == [{"field": "email", "before": None, "after": f"{ids[1]}@example.com"}]


async def test_a_batch_update_is_one_entry_naming_each_record_with_its_own_changes(store: Store) -> None:
    """``one_entry_per_batch`` around a ``bulk_write`` of records read to change (a tracker's
    batch of leads): ONE stored entry naming the changed records, each read back (history,
    query, export) as its own update with exactly its own changes; an unchanged save is no
    entry; erasure rewrites one record's values and keeps the others'."""
    run = uuid.uuid4().hex[:6]
    ids = [f"bu-{run}-{k}" for k in range(3)]
    user = f"u-bupd-{run}"
    await store.db["bulk_leads"].insert_many(
        [{"_id": i, "email": f"{i}@example.com", "score": 0} for i in ids]
    )

    async def work(tx: Tx) -> None:
        found = await cast(audit.AuditedCollection, tx.db["bulk_leads"]).find_to_change(
            {"_id": {"$in": ids}}, session=tx.session
        )
        assert len(found) == 3
        with audit.one_entry_per_batch():
            await tx.db["bulk_leads"].bulk_write(
                [
                    ReplaceOne({"_id": ids[0]}, {"email": f"{ids[0]}@example.com", "score": 40}),
                    ReplaceOne({"_id": ids[1]}, {"email": f"{ids[1]}@example.com", "score": 0}),  # unchanged
                    ReplaceOne({"_id": ids[2]}, {"email": f"new-{ids[2]}@example.com", "score": 60}),
                ],
                session=tx.session,
            )

    token = as_user(user)
    try:
        await store.transaction(work)
    finally:
        audit.actor_var.reset(token)

    [stored] = await store.db[audit.AUDIT_LOG].find({"actor.user_id": user}).to_list()
    assert (stored["action"], stored["record"]["id"]) == ("update", [ids[0], ids[2]])
    first = (await audit.history(store.db, "bulk_leads", ids[0], limit=10)).items
    assert [(e["action"], e["changes"]) for e in first] == [
        ("update", [{"field": "score", "before": 0, "after": 40}])
    ]
    third = (await audit.history(store.db, "bulk_leads", ids[2], limit=10)).items
    assert third[0]["changes"] == [
        {"field": "email", "before": f"{ids[2]}@example.com", "after": f"new-{ids[2]}@example.com"},
        {"field": "score", "before": 0, "after": 60},
    ]
    assert third[0]["batch"] == {"id": stored["_id"], "size": 2}
    assert (await audit.history(store.db, "bulk_leads", ids[1], limit=10)).items == []
    by_user = (await audit.query(store.db, audit.Filters(user_id=user), limit=10)).items
    assert sorted(e["record"]["id"] for e in by_user) == [ids[0], ids[2]]
    rows = [row async for row in audit.csv_rows(store.db, audit.Filters(user_id=user))]
    assert sorted(r[audit.CSV_COLUMNS.index("record_id")] for r in rows) == [ids[0], ids[2]]

    async def erase(tx: Tx) -> int:
        return await audit.erase_values(
            tx.db, tx.session, [("bulk_leads", ids[2])], re.compile(re.escape(ids[2]))
        )

    assert await store.transaction(erase) == 1
    [erased] = (await audit.history(store.db, "bulk_leads", ids[2], limit=5)).items
    assert erased["changes"][0]["before"] == "[erased]@example.com"
    assert erased["changes"][0]["after"] == "new-[erased]@example.com"
    [kept] = (await audit.history(store.db, "bulk_leads", ids[0], limit=5)).items
    assert kept["changes"] == first[0]["changes"]


@pytest.mark.parametrize(
    "filters",
    [
        audit.Filters(),
        audit.Filters(user_id="u-1"),
        audit.Filters(record_type="deals"),
        audit.Filters(record_type="deals", record_id="a"),
        audit.Filters(user_id="u-1", record_type="deals"),
        audit.Filters(since=datetime(2026, 1, 1, tzinfo=UTC), until=datetime(2027, 1, 1, tzinfo=UTC)),
    ],
    ids=["all", "user", "type", "record", "user+type", "period"],
)
async def test_audit_queries_use_an_index(store: Store, filters: audit.Filters) -> None:
    async def batch(tx: Tx) -> None:  # batch entries make the by_record index multikey
        with audit.one_entry_per_batch():
            await tx.db["deals"].insert_many([{"n": 1}, {"n": 2}], session=tx.session)

    await store.transaction(batch)
    plan = await audit.find_query(store.db, filters).explain()
    assert "COLLSCAN" not in str(plan["queryPlanner"]["winningPlan"]), plan["queryPlanner"]["winningPlan"]


def test_entries_written_in_one_millisecond_read_back_in_the_order_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log is read in ``(at, _id)`` order; one transaction's entries share a millisecond."""
    instant = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    monkeypatch.setattr(audit, "now_millis", lambda: instant)
    context = audit.Context(audit.system_actor("sales"), None, None, None)
    trail = audit.Trail("sales", session=cast(Any, object()), context=context)  # recording does no I/O
    for n in range(12):
        before = None if n == 0 else {"_id": "d", "n": n - 1}
        trail.record("deals", before, {"_id": "d", "n": n} if n < 11 else None)
    read_back = sorted(trail.entries, key=lambda e: (e["at"], e["_id"]))
    assert [e["action"] for e in read_back] == ["insert"] + ["update"] * 10 + ["delete"]
    assert [e["changes"][0]["after"] for e in read_back[:11]] == list(range(11))


def test_records_named_by_records_by_carry_their_own_requests_context() -> None:
    """One transaction holding several requests' inserts (leads' grouped captures): each
    record's entry names its own request, even in a bulk insert; the others the transaction's."""
    own = {
        rid: audit.Context(audit.user_actor(Actor(rid, rid, frozenset())), "POST /leads", rid, rid)
        for rid in "ab"
    }
    contexts: dict[str, audit.Context] = {}
    with audit.records_by(contexts):
        trail = audit.Trail(
            "leads",
            session=cast(Any, object()),
            context=audit.Context(audit.system_actor("leads"), None, None, None),
        )
    contexts.update({"1": own["a"], "2": own["b"]})  # filled once the ids are made, as a handler does
    trail.record_inserts("leads", [{"_id": "1", "n": 1}, {"_id": "2", "n": 2}, {"_id": "3", "n": 3}])
    trail.record("leads", {"_id": "2", "n": 2}, {"_id": "2", "n": 4})
    by_record = [(e["record"]["id"], e["request_id"], e["actor"]["user_id"]) for e in trail.entries]
    assert by_record == [("1", "a", "a"), ("2", "b", "b"), ("3", None, "system:leads"), ("2", "b", "b")]
    assert all("changes" in e for e in trail.entries), "one request's one record: a plain entry"


def test_a_diff_lists_what_was_set_and_treats_missing_and_null_alike() -> None:
    doc = {"_id": "d", "stage": "new", "owner": None, "password_hash": "x", "lines": [{"n": 1}]}
    inserted = audit.diff(None, doc)
    assert inserted == [
        {"field": "lines", "before": None, "after": [{"n": 1}]},
        {"field": "password_hash", "before": None, "after": audit.REDACTED},
        {"field": "stage", "before": None, "after": "new"},
    ]
    assert [c["field"] for c in audit.diff(doc, None)] == ["lines", "password_hash", "stage"]
    assert audit.diff({"_id": "d", "a": None}, {"_id": "d"}) == []
    set_to_zero = audit.diff({"_id": "d", "a": None}, {"_id": "d", "a": 0})
    assert set_to_zero == [{"field": "a", "before": None, "after": 0}]


def test_a_remembered_document_is_a_deep_copy_sharing_only_immutable_values() -> None:
    when = datetime(2026, 12, 5, tzinfo=UTC)
    doc: dict[str, Any] = {"_id": "d", "at": when, "tags": ["a", {"k": [1]}], "nested": {"x": {"y": 1}}}
    copied = audit.copy_doc(doc)
    assert copied == doc
    doc["tags"][1]["k"].append(2)
    doc["nested"]["x"]["y"] = 2
    assert copied["tags"] == ["a", {"k": [1]}]
    assert copied["nested"] == {"x": {"y": 1}}
    assert copied["at"] is when


async def test_a_transactions_collection_is_built_once_per_name_and_still_records(store: Store) -> None:
    """A consumer's batch asks ``tx.db`` for the same few collections per event: one object each
    for the transaction (building one costs about as much as encoding a small command)."""
    record_id = f"once-{uuid.uuid4().hex[:6]}"

    async def work(tx: Tx) -> None:
        first, again = tx.db["deals"], tx.db["deals"]
        assert first is again
        assert tx.db["notes"] is not first
        await again.insert_one({"_id": record_id, "stage": "new"}, session=tx.session)

    await store.transaction(work)
    assert [e["action"] for e in await entries(store, record_id)] == ["insert"]


async def test_a_transactions_documents_are_freed_when_it_ends_without_the_cyclic_collector(
    store: Store,
) -> None:
    """A transaction's collection objects hold its database, which caches them: released when the
    transaction ends, so the trail and the documents it wrote go with the last reference, not at
    the cyclic collector's next full collection (docs/performance.md, tenth session, rss)."""
    left: list[weakref.ref[Any]] = []

    async def work(tx: Tx) -> None:
        written = {"_id": f"freed-{uuid.uuid4().hex[:6]}", "stage": "new"}
        await tx.db["deals"].insert_one(written, session=tx.session)
        left.extend([weakref.ref(tx.db), weakref.ref(tx.db["deals"])])

    gc.collect()
    gc.disable()
    try:
        await store.transaction(work)
        assert [ref() for ref in left] == [None, None], "kept alive by a reference cycle"
    finally:
        gc.enable()


def test_deferred_updates_are_one_bulk_write_unless_a_record_has_two_causes_or_no_id() -> None:
    """``Tx.update_later``'s writes of a collection, each with the event that queued it: ONE run
    (one ``bulk_write``) naming each record's cause, split only where a record is written again
    by another cause (an entry each) or a write does not name its record by ``_id`` (its own
    run, under its cause); bookkeeping collections are one run whoever queued them."""
    a, b = (audit.Context(audit.event_actor("leads", "t", e), "event t v1", None, e) for e in "ab")
    ops = [
        (UpdateOne({"_id": 1}, {"$set": {"n": 1}}), a),
        (UpdateOne({"_id": 2}, {"$set": {"n": 2}}), b),
        (UpdateOne({"_id": 1}, {"$set": {"m": 1}}), a),
        (UpdateOne({"_id": 1}, {"$set": {"n": 3}}), b),
        (UpdateMany({"stage": "new"}, {"$set": {"n": 4}}), a),
        (UpdateOne({"_id": 3}, {"$set": {"n": 5}}), None),
    ]
    runs = audit.queued_runs(ops)
    assert [([o for o, _ in ops].index(run[0][0]), len(run[0]), run[1], run[2]) for run in runs] == [
        (0, 3, {"1": a, "2": b}, None),
        (3, 1, {"1": b}, None),
        (4, 1, {}, a),
        (5, 1, {}, None),
    ]
    [(every, none, nobody)] = audit.queued_runs(ops, audited=False)
    assert (len(every), none, nobody) == (6, {}, None)
    assert audit.queued_runs([]) == []


def test_a_derived_field_is_in_no_entrys_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field a store derives from others for its indexes (leads' ``list_keys``) is left out
    of an insert's and an update's changes: the history tells the rep, not the index key; an
    update that changed only it is no change."""
    monkeypatch.setattr(audit, "DERIVED_FIELDS", set())
    before = {"_id": "l1", "status": "new", "keys": ["status:new"]}
    after = {"_id": "l1", "status": "new", "rep": "r", "keys": ["status:new", "rep:r"]}
    assert [c["field"] for c in audit.diff(before, after)] == ["keys", "rep"], "shown before"
    audit.derived_field("keys")
    assert audit.diff(before, after) == [{"field": "rep", "before": None, "after": "r"}]
    assert [c["field"] for c in audit.diff(None, after)] == ["rep", "status"]
    assert audit.diff(before, {**before, "keys": ["status:new", "rep:r"]}) == []
