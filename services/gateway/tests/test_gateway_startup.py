"""The process refuses to start in production without a bootstrap admin password (fail fast)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_production_without_admin_password_exits_with_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_ENV": "production",
            "CRM_JWT_SECRET": "a-real-production-secret-0123456789abcdef",
            "MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "CRM_ADMIN_PASSWORD must be set when CRM_ENV=production" in proc.stderr
