"""A service's platform imports leave kafka-python out: topics are provisioned with aiokafka's
admin client (kafka-python's import alone kept 6.7 MB resident in every service; sales draining
a backlog is the process nearest its 150 MB bound: docs/performance.md, fourteenth session,
drain). Only the bench's tools and the development infrastructure use it."""

from __future__ import annotations

import subprocess
import sys

_IMPORTED = (
    "import sys, crm_platform.app, crm_platform.runtime, crm_platform.consumer, crm_platform.kafka; "
    "print(*(m for m in sys.modules if m == 'kafka' or m.startswith('kafka.')))"
)


def test_a_service_imports_no_kafka_python() -> None:
    found = subprocess.run(
        [sys.executable, "-c", _IMPORTED], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert found == []
