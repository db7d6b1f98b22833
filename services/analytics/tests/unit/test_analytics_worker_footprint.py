"""The analytics worker serves no HTTP API: it does not import FastAPI or httpx (with what they
bring, about 12 MB of its resident memory; it is the service nearest the 150 MB bound under
the bench's load: docs/performance.md, "Thirteenth session, memory")."""

from __future__ import annotations

import subprocess
import sys

_IMPORTED = "import sys, analytics.worker; print(*(m for m in ('fastapi', 'httpx') if m in sys.modules))"


def test_the_worker_imports_neither_fastapi_nor_httpx() -> None:
    found = subprocess.run(
        [sys.executable, "-c", _IMPORTED], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert found == []
