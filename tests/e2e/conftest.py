"""The whole platform as separate processes for end-to-end tests.

Five services and the faust worker run as their own processes against the
session's real broker and mongod, on ports of their own (gateway 18080,
services 18001-18004) and with databases and consumer groups unique to this
run, so nothing is shared with other suites or with `make run`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crm_platform.devinfra.journey import Gateway, seed_rosters, seed_users
from crm_platform.devinfra.launcher import Platform
from crm_platform.testing import idle_backoff_ms

RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
def platform(crm_infra: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    logdir = Path(os.environ.get("CRM_E2E_LOGDIR", tmp_path_factory.mktemp("e2e-logs")))
    p = Platform(
        crm_infra.kafka_bootstrap,
        crm_infra.mongodb_uri,
        logdir,
        gateway_port=int(os.environ.get("CRM_E2E_GATEWAY_PORT", "18080")),
        service_port_base=int(os.environ.get("CRM_E2E_SERVICE_PORT_BASE", "18000")),
        db_prefix=f"e2e_{RUN}_",
        group_suffix=f"-e2e-{RUN}",
        consumer_idle_backoff_ms=idle_backoff_ms(crm_infra),
        # Each erasure is confirmed after its recheck (docs/governance.md, section 3): seconds
        # here, not mongod's 190 s, so the erasure tests wait for it.
        extra_env={"CRM_ERASURE_RECHECK_SECONDS": "2"},
    )
    p.start()
    try:
        p.wait_ready(timeout=90)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="session")
def gw(platform: Platform) -> Iterator[Gateway]:
    """The gateway as the demo users see it (users and rosters seeded once)."""
    gateway = Gateway(platform.url("gateway"))
    seed_users(gateway)
    seed_rosters(gateway)
    yield gateway
    gateway.close()
