"""``/erasure-requests`` through the running gateway, on the real broker and mongod (issue 9).

Only administrators file a request; administrators and auditors read them; other roles
neither. Bad input is a 422 naming the field. The request published on the log carries the
keyed hash of the e-mail and never the e-mail. The departments' confirmations, consumed by the
gateway's own consumer, fold into the request until it is completed; a forged or unknown one
is dead-lettered with its reason and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from crm_contracts import envelope_for, utcnow
from crm_contracts.events.governance import ERASURE_DEPARTMENTS, ErasureCompletedV1, ErasureErasedV1
from crm_contracts.topics import ERASURE_CONFIRMATIONS, GATEWAY_ERASURE_REQUESTS, dead_letter_topic
from crm_platform.pseudonym import email_hash
from crm_platform.testing import TopicReader, auth_headers, eventually, produce_envelope, start_group_at_end
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration

ADMIN = auth_headers(["admin"], "erasure-admin")
AUDITOR = auth_headers(["auditor"], "erasure-auditor")
MANAGER = auth_headers(["sales_manager"], "erasure-manager")


@pytest.fixture
def settings(gateway_settings: Callable[..., GatewaySettings], kafka_bootstrap: str) -> GatewaySettings:
    s = gateway_settings()
    s.outbox_poll_seconds = 0.1
    return s


async def _at_end(settings: GatewaySettings) -> None:
    """This gateway's consumer skips the confirmations other suites left on the shared broker."""
    await start_group_at_end(settings.kafka_bootstrap_servers, settings.group_id, [ERASURE_CONFIRMATIONS])


async def test_only_admins_file_and_admins_and_auditors_read(
    gateway: Callable[..., Any], settings: GatewaySettings
) -> None:
    await _at_end(settings)
    async with gateway(settings) as client:
        body = {"email": f"ada-{uuid.uuid4().hex[:6]}@example.com"}
        assert (await client.post("/erasure-requests", json=body, headers=AUDITOR)).status_code == 403
        assert (await client.post("/erasure-requests", json=body, headers=MANAGER)).status_code == 403
        filed = await client.post("/erasure-requests", json=body, headers=ADMIN)
        assert filed.status_code == 202, filed.text
        request = filed.json()
        assert request["state"] == "pending"
        assert [d["state"] for d in request["departments"]] == ["pending"] * len(ERASURE_DEPARTMENTS)
        assert body["email"] not in filed.text  # only the keyed hash is kept
        for who in (ADMIN, AUDITOR):
            one = await client.get(f"/erasure-requests/{request['id']}", headers=who)
            assert one.status_code == 200
            assert one.json()["email_hash"] == email_hash(body["email"])
            listed = await client.get("/erasure-requests", headers=who)
            assert request["id"] in [r["id"] for r in listed.json()["items"]]
        assert (await client.get("/erasure-requests", headers=MANAGER)).status_code == 403
        assert (await client.get("/erasure-requests/nope", headers=ADMIN)).status_code == 404


async def test_bad_requests_are_refused_naming_the_field(
    gateway: Callable[..., Any], settings: GatewaySettings
) -> None:
    await _at_end(settings)
    async with gateway(settings) as client:
        cases = [
            ({}, "body.email"),
            ({"email": "not-an-email"}, "email"),
            ({"record_ids": ["no spaces allowed"]}, "record_ids"),
            ({"email": "ada@example.com", "phone": "123"}, "phone"),
        ]
        for body, field in cases:
            r = await client.post("/erasure-requests", json=body, headers=ADMIN)
            assert r.status_code == 422, (body, r.text)
            assert field in r.text, (body, r.text)
        listed = await client.get("/erasure-requests", headers=ADMIN)
        assert listed.json()["items"] == []


async def test_the_request_on_the_log_holds_the_hash_never_the_email(
    gateway: Callable[..., Any], settings: GatewaySettings, kafka_bootstrap: str
) -> None:
    await _at_end(settings)
    email = f"Grace.{uuid.uuid4().hex[:6]}@Example.com"
    reader = await TopicReader(kafka_bootstrap, GATEWAY_ERASURE_REQUESTS).start()
    try:
        async with gateway(settings) as client:
            r = await client.post(
                "/erasure-requests", json={"email": email, "record_ids": ["lead-1"]}, headers=ADMIN
            )
            assert r.status_code == 202, r.text
            request_id = r.json()["id"]

            def ours(records: list[Any]) -> Any:
                return next((x for x in records if request_id.encode() in x.value), None)

            record = await reader.wait_for(ours, what="the erasure request on the log")
    finally:
        await reader.stop()
    assert email.lower().encode() not in record.value.lower()
    assert b"grace" not in record.value.lower()
    (envelope,) = [e for e in reader.envelopes("erasure.requested") if e.payload["request_id"] == request_id]
    assert envelope.source == "gateway"
    assert envelope.payload["email_hash"] == email_hash(email.lower())
    assert envelope.payload["record_ids"] == ["lead-1"]


def _confirmation(request_id: str, department: str) -> ErasureCompletedV1:
    return ErasureCompletedV1(
        request_id=request_id,
        department=department,
        records_erased=1,
        audit_entries_rewritten=2,
        duration_ms=250,
        completed_at=utcnow(),
    )


async def test_confirmations_fold_and_forged_ones_are_dead_lettered(
    gateway: Callable[..., Any], settings: GatewaySettings, kafka_bootstrap: str
) -> None:
    await _at_end(settings)
    dlq = await TopicReader(kafka_bootstrap, dead_letter_topic("gateway")).start()
    try:
        async with gateway(settings) as client:
            r = await client.post("/erasure-requests", json={"email": "x@example.com"}, headers=ADMIN)
            request_id = r.json()["id"]
            forged = envelope_for(
                _confirmation(request_id, "sales"), source="leads", correlation_id=request_id
            )
            unknown_id = f"none-{uuid.uuid4().hex[:8]}"
            unknown = envelope_for(_confirmation(unknown_id, "sales"), source="sales", correlation_id="c")
            for env in (forged, unknown):
                await produce_envelope(kafka_bootstrap, ERASURE_CONFIRMATIONS, env)
            for department in ERASURE_DEPARTMENTS:
                env = envelope_for(
                    _confirmation(request_id, department), source=department, correlation_id="c"
                )
                await produce_envelope(kafka_bootstrap, ERASURE_CONFIRMATIONS, env)

            async def completed() -> dict[str, Any] | None:
                got = (await client.get(f"/erasure-requests/{request_id}", headers=AUDITOR)).json()
                return dict(got) if got["state"] == "completed" else None

            done = await eventually(completed, what="the request to be completed")
            assert {d["department"]: d["records_erased"] for d in done["departments"]} == dict.fromkeys(
                ERASURE_DEPARTMENTS, 1
            )
            assert done["duration_ms"] is not None

            def reasons(records: list[Any]) -> dict[str, str] | None:
                found = {
                    json.loads(x.value).get("event_id", ""): dict(x.headers)["dlq_reason"].decode()
                    for x in records
                }
                wanted = {str(forged.event_id), str(unknown.event_id)}
                return found if wanted <= set(found) else None

            found = await dlq.wait_for(reasons, what="the forged and the unknown confirmation dead-lettered")
    finally:
        await dlq.stop()
    assert found[str(forged.event_id)] == "wrong_department"
    assert found[str(unknown.event_id)] == "unknown_erasure_request"


def _first_pass(request_id: str, department: str, records: int, due: datetime) -> ErasureErasedV1:
    return ErasureErasedV1(
        request_id=request_id,
        department=department,
        records_erased=records,
        audit_entries_rewritten=records,
        duration_ms=100,
        erased_at=utcnow(),
        recheck_due_at=due,
    )


def _completed(request_id: str, department: str, records: int) -> ErasureCompletedV1:
    return _confirmation(request_id, department).model_copy(update={"records_erased": records})


async def _produce(bootstrap: str, event: Any, source: str) -> Any:
    env = envelope_for(event, source=source, correlation_id="c")
    await produce_envelope(bootstrap, ERASURE_CONFIRMATIONS, env)
    return env


async def test_a_department_erased_but_not_rechecked_keeps_the_request_pending_and_the_late_records_show(
    gateway: Callable[..., Any], settings: GatewaySettings, kafka_bootstrap: str
) -> None:
    """The first pass (``erasure.erased``) shows what was erased and when the recheck is due; the
    request is completed only by every department's confirmation, sent after its recheck, and the
    records a late writer left (erased by the recheck) show per department. A re-sent first pass
    changes nothing; a forged one is dead-lettered."""
    await _at_end(settings)
    dlq = await TopicReader(kafka_bootstrap, dead_letter_topic("gateway")).start()
    try:
        async with gateway(settings) as client:
            r = await client.post("/erasure-requests", json={"email": "late@example.com"}, headers=ADMIN)
            request_id = r.json()["id"]
            due = utcnow() + timedelta(seconds=190)
            stores = ("leads", "sales", "service-desk")
            for department in stores:
                await _produce(kafka_bootstrap, _first_pass(request_id, department, 2, due), department)
            resent = await _produce(kafka_bootstrap, _first_pass(request_id, "sales", 9, due), "sales")
            forged = await _produce(kafka_bootstrap, _first_pass(request_id, "sales", 5, due), "leads")
            await _produce(kafka_bootstrap, _completed(request_id, "analytics", 0), "analytics")

            async def states(wanted: dict[str, str]) -> dict[str, Any] | None:
                got = (await client.get(f"/erasure-requests/{request_id}", headers=AUDITOR)).json()
                seen = {d["department"]: d["state"] for d in got["departments"]}
                return dict(got) if seen == wanted else None

            erased = {**dict.fromkeys(stores, "erased"), "analytics": "confirmed"}
            got = await eventually(
                lambda: states(erased), what="three departments erased, analytics confirmed"
            )
            assert got["state"] == "pending", "erased is not completed: the rechecks are due"
            assert got["completed_at"] is None
            assert datetime.fromisoformat(got["rechecks_due_by"]) == due.replace(
                microsecond=due.microsecond // 1000 * 1000
            )
            by_name = {d["department"]: d for d in got["departments"]}
            assert by_name["sales"]["records_erased"] == 2, "the first first pass counts, not its copy"
            assert by_name["sales"]["late_records"] is None
            assert by_name["leads"]["recheck_due_at"] is not None

            for department, total in (("leads", 3), ("sales", 2), ("service-desk", 2)):
                await _produce(kafka_bootstrap, _completed(request_id, department, total), department)
            done = await eventually(
                lambda: states(dict.fromkeys(ERASURE_DEPARTMENTS, "confirmed")),
                what="every department confirmed",
            )
            assert done["state"] == "completed"
            assert done["rechecks_due_by"] is None
            late = {d["department"]: d["late_records"] for d in done["departments"]}
            assert late == {"leads": 1, "sales": 0, "service-desk": 0, "analytics": None}
            assert {d["department"]: d["records_erased"] for d in done["departments"]} == {
                "leads": 3,
                "sales": 2,
                "service-desk": 2,
                "analytics": 0,
            }

            def reasons(records: list[Any]) -> dict[str, str] | None:
                found = {
                    json.loads(x.value).get("event_id", ""): dict(x.headers)["dlq_reason"].decode()
                    for x in records
                }
                return found if str(forged.event_id) in found else None

            found = await dlq.wait_for(reasons, what="the forged first pass dead-lettered")
    finally:
        await dlq.stop()
    assert found[str(forged.event_id)] == "wrong_department"
    assert str(resent.event_id) not in found, "a re-sent first pass is no dead letter: it is ignored"
