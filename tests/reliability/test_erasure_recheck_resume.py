"""An erasure request's recheck survives its department being killed (docs/governance.md,
section 3, "A late writer").

Sales runs as a process on the real broker and mongod, first with a recheck delay of a day:
an erasure request is filed, sales erases and records the request's recheck. A record of the
person then appears in sales' database, as a late writer leaves it (the race itself, a handoff
that opened the person before the erasure committed and stored them after it, is reproduced
in-process by ``services/sales/tests/test_sales_erasure_late_handoff.py``; here the record is
written directly). Sales is SIGKILLed with the recheck not run, and started again with a delay
of a second: the new process runs the recheck it finds in the database, and the record is erased.
Sales' confirmation (``erasure.completed``) is sent only by that recheck, once, the late record
counted; before it, only the first pass's ``erasure.erased``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crm_platform.devinfra.launcher import Platform
from crm_platform.erasure import RECHECKS
from crm_platform.mongo import OUTBOX, outbox_events_pipeline
from crm_platform.pseudonym import email_hash
from crm_platform.testing import idle_backoff_ms, request_erasure, until
from pymongo import MongoClient

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def platform(crm_infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000"))
    gateway = int(os.environ.get("CRM_E2E_GATEWAY_PORT", "18080"))
    p = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        Path(os.environ.get("CRM_E2E_LOGDIR", tmp_path_factory.mktemp("erasure-recheck-logs"))),
        gateway_port=gateway + 60,
        service_port_base=base + 60,
        db_prefix=f"erc_{RUN}_",
        group_suffix=f"-erc-{RUN}",
        only=("sales",),
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
        extra_env={"CRM_ERASURE_RECHECK_SECONDS": "86400"},  # never due in the first process
    )
    p.start()
    try:
        p.wait_ready(timeout=90)
        yield p
    finally:
        p.stop()


def _reports(db: Any, request_id: str) -> dict[str, list[Doc]]:
    """Sales' outbox's erasure events of the request, by type (their payloads)."""
    found: dict[str, list[Doc]] = {}
    for item in db[OUTBOX].aggregate(outbox_events_pipeline({"key": request_id})):
        found.setdefault(item["event_type"], []).append(item["envelope"]["payload"])
    return found


def test_a_recheck_recorded_before_the_department_was_killed_is_run_after_its_restart(
    platform: Platform, crm_infra: Any
) -> None:
    email = f"late-{RUN}@example.com"
    client: MongoClient[Doc] = MongoClient(crm_infra.mongodb_uri)
    db = client[f"erc_{RUN}_sales"]
    try:
        request = asyncio.run(request_erasure(crm_infra.kafka_bootstrap, email))
        request_id = request.payload["request_id"]
        until(lambda: db[RECHECKS].find_one({"_id": request_id}), 90, "the request's recheck recorded")
        late = {
            "_id": f"late-{RUN}",
            "email": email,
            "name": "Late Writer",
            "person_hashes": [email_hash(email)],
        }
        db["contacts"].insert_one(late)

        platform.stop(("sales",), sig=signal.SIGKILL)
        assert db[RECHECKS].find_one({"_id": request_id}) is not None, "not run before the kill"
        assert db["contacts"].find_one({"_id": late["_id"]}) == late
        before = _reports(db, request_id)
        assert "erasure.completed" not in before, "confirmed before the recheck"
        (first,) = before["erasure.erased"]
        platform.extra_env["CRM_ERASURE_RECHECK_SECONDS"] = "1"
        platform.start(("sales",))
        platform.wait_ready(timeout=90, names=("sales",))

        erased_query = {"_id": late["_id"], "email": {"$regex": "@erased[.]example$"}}
        erased = until(lambda: db["contacts"].find_one(erased_query), 60, "the late record erased")
        assert email not in str(erased)
        assert "Late Writer" not in str(erased)
        assert erased["person_hashes"] == []

        def recheck_gone() -> Doc | None:
            return None if db[RECHECKS].find_one({"_id": request_id}) else {"gone": request_id}

        until(recheck_gone, 30, "the recheck's document deleted by its run")
        (completed,) = _reports(db, request_id)["erasure.completed"]  # once, by the recheck
        assert completed["records_erased"] == first["records_erased"] + 1, "the late record counted"
    finally:
        client.close()
