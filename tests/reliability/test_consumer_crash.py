"""A consumer killed with SIGKILL after storing an effect, before committing its
offset, has no second effect after restart; with static membership the restarted
process takes its old place in the group at once. Killed inside a batch's transaction
(group commit), nothing of that transaction is kept and every event still has exactly
one effect after the restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crm_platform import audit
from crm_platform.testing import produce_envelope, timeout_scale
from pymongo import MongoClient
from pymongo.collection import Collection
from reliability.probe import envelope

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).with_name("crash_consumer.py")


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout * timeout_scale(),  # a deadline, stretched on an overloaded machine
    )


async def test_sigkill_between_store_and_commit_causes_no_second_effect(
    crm_infra: Any,
    kafka_bootstrap: str,
    mongodb_uri: str,
    tmp_path: Path,
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    group = f"rel-crash-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(group)
    database = f"t_{group.replace('-', '_')}"
    names = [f"e{i}" for i in range(1, 6)]
    for name in names:
        await produce_envelope(kafka_bootstrap, topic, envelope(f"lead-{name}", name))
    outcomes = tmp_path / "outcomes.txt"
    common = [
        "--bootstrap",
        kafka_bootstrap,
        "--mongo",
        mongodb_uri,
        "--database",
        database,
        "--topic",
        topic,
        "--group",
        group,
        "--outcomes",
        str(outcomes),
        # Static membership: the restarted process, with the same group.instance.id,
        # takes the killed member's place and partitions at once. Without it the
        # killed member would hold its partitions until the broker evicts it (real
        # Kafka: session.timeout.ms; the embedded emulator: never).
        "--instance-id",
        f"{group}-0",
    ]

    crashed = _run([*common, "--crash-on", "e3", "--expect", "5"])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    effects: Collection[dict[str, Any]] = MongoClient(mongodb_uri)[database]["effects"]
    assert effects.find_one({"name": "e3"}) is not None, "e3's effect was stored before the kill"

    with outcomes.open("a") as f:
        f.write("--- restart\n")
    # No broker restart, and well inside a session timeout: only static membership
    # gives the partitions back this soon (the emulator never evicts, so on it the bound
    # is only a deadline, stretched like every other one on an overloaded machine).
    resumed = _run([*common, "--expect", "5"], timeout=30)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    counts = {d["name"]: d["count"] for d in effects.find()}
    assert counts == dict.fromkeys(names, 1), "every event has exactly one effect"
    first_run, second_run = outcomes.read_text().split("--- restart\n")
    assert "e3" not in first_run, "killed before e3's offset (or outcome) was recorded"
    assert "e3 duplicate" in second_run, "e3 was redelivered after the kill and skipped"
    for name in ("e4", "e5"):
        # Processed after the restart or, when stored in the same group transaction as
        # e3 before the kill (crm_platform.consumer's group commit), redelivered and skipped.
        assert f"{name} processed" in second_run or f"{name} duplicate" in second_run, second_run


@pytest.mark.timeout(900)  # the restart's deadline stretches with the machine's load (up to 5x)
@pytest.mark.parametrize("deferred", [False, True], ids=["insert-per-event", "insert-per-batch"])
async def test_sigkill_inside_a_batch_transaction_keeps_none_of_it_and_loses_nothing(
    deferred: bool,
    crm_infra: Any,
    kafka_bootstrap: str,
    mongodb_uri: str,
    tmp_path: Path,
    scratch_topics: Callable[[str], tuple[str, str]],
) -> None:
    group = f"rel-crash-in-{uuid.uuid4().hex[:6]}"
    topic, _ = scratch_topics(group)
    database = f"t_{group.replace('-', '_')}"
    names = [f"e{i}" for i in range(1, 6)]
    for name in names:
        await produce_envelope(kafka_bootstrap, topic, envelope(f"lead-{name}", name))
    outcomes = tmp_path / "outcomes.txt"
    common = [
        *("--bootstrap", kafka_bootstrap, "--mongo", mongodb_uri, "--database", database),
        *("--topic", topic, "--group", group, "--outcomes", str(outcomes)),
        *("--instance-id", f"{group}-0"),  # static membership, as above
        *(["--deferred"] if deferred else []),  # Tx.insert_later: the batch's effects in one insert
    ]

    crashed = _run([*common, "--crash-inside", "e3", "--expect", "5"])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri)
    effects: Collection[dict[str, Any]] = client[database]["effects"]
    assert effects.find_one({"name": "e3"}) is None, "e3's effect was written but never committed"

    with outcomes.open("a") as f:
        f.write("--- restart\n")
    # The killed process's transaction stays open in mongod until it expires
    # (transactionLifetimeLimitSeconds, 60 s by default): until then the restarted
    # consumer's writes of the same ledger entries conflict and are retried.
    resumed = _run([*common, "--expect", "5"], timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    counts = {d["name"]: d["count"] for d in effects.find()}
    assert counts == dict.fromkeys(names, 1), "every event has exactly one effect"
    first_run, second_run = outcomes.read_text().split("--- restart\n")
    assert "e3" not in first_run
    assert "e3 processed" in second_run, "stored once, after the restart (nothing of it was kept)"
    # The audit log neither loses nor doubles either: each effect has ONE insert entry, naming
    # its own event although the batch was stored in one transaction (nothing of the killed one).
    log = client[database][audit.AUDIT_LOG].find({"record.type": "effects"})
    entries = [e for stored in log for e in audit.entries_of(stored)]
    causes = sorted(
        (e["record"]["id"], e["action"], e["actor"].get("event_id"), e["correlation_id"]) for e in entries
    )
    assert causes == sorted((d["_id"], "insert", d["_id"], f"lead-{d['name']}") for d in effects.find()), (
        causes
    )
    client.close()
