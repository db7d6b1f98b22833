"""Under the supervisor, a SIGKILLed department comes back by itself and nobody else stops.

Its own small platform (leads and service-desk, own ports, databases and consumer
groups) so killing a process here cannot disturb the session's shared platform.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_platform.devinfra.journey import until
from crm_platform.devinfra.launcher import Platform
from crm_platform.devinfra.supervisor import RestartPolicy, Supervisor
from crm_platform.testing import idle_backoff_ms

pytestmark = pytest.mark.e2e


def test_a_sigkilled_service_is_restarted_ready_and_the_others_never_stop(
    crm_infra: Any, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    base = int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000")) + 20
    platform = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        tmp_path / "logs",
        gateway_port=base + 9,  # not started
        service_port_base=base,
        db_prefix=f"sup_{run}_",
        group_suffix=f"-sup-{run}",
        only=("leads", "service-desk"),
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
    )
    stopping = threading.Event()
    platform.start()
    try:
        platform.wait_ready(timeout=90)
        supervisor = Supervisor(platform, RestartPolicy(initial_delay=0.2), control_dir=tmp_path / "control")
        loop = threading.Thread(target=supervisor.run, args=(stopping, 0.1), daemon=True)
        loop.start()
        victim, bystander = platform.procs["leads"], platform.procs["service-desk"]

        os.kill(victim.pid, signal.SIGKILL)

        def leads_back() -> bool:
            proc = platform.procs["leads"]
            if proc.pid == victim.pid or proc.poll() is not None:
                return False
            try:
                return httpx.get(f"{platform.url('leads')}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        until(leads_back, timeout=60, what="leads restarted and ready")
        assert victim.returncode == -signal.SIGKILL
        assert supervisor.states["leads"].restarts == 1
        assert platform.procs["service-desk"] is bystander
        assert bystander.poll() is None
        assert supervisor.states["service-desk"].restarts == 0
        assert httpx.get(f"{platform.url('service-desk')}/readyz", timeout=5).status_code == 200
    finally:
        stopping.set()
        platform.stop()
