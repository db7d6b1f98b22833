"""The process refuses to start in production without real keys or an admin password (fail fast)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crm_platform.keys import new_key


def _start_in_production(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    full.update(
        {
            "CRM_ENV": "production",
            "MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "CRM_KAFKA_ALLOW_PLAINTEXT": "true",
            "CRM_PSEUDONYM_KEY": "an-install-secret-of-enough-length",
            **env,
        }
    )
    # -X importtime: each module the process imports is listed on stderr (see the fail-fast test).
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gateway.main"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_production_without_admin_password_exits_with_a_clear_error(tmp_path: Path) -> None:
    new_key(tmp_path / "private.pem", tmp_path / "public.json")
    proc = _start_in_production(
        CRM_JWT_PRIVATE_KEY_FILE=str(tmp_path / "private.pem"),
        CRM_JWT_PUBLIC_KEYS_FILE=str(tmp_path / "public.json"),
    )
    assert proc.returncode != 0
    assert "CRM_ADMIN_PASSWORD must be set when CRM_ENV=production" in proc.stderr


def test_production_without_keys_exits_with_a_clear_error() -> None:
    """No development key and no shared secret can reach production: the keys must be given."""
    proc = _start_in_production(
        CRM_ADMIN_PASSWORD="s3cret-enough-pass", CRM_JWT_SECRET="dev-only-secret-change-me-0123456789abcdef"
    )
    assert proc.returncode != 0
    assert "CRM_JWT_PUBLIC_KEYS_FILE must name the gateway's public keys" in proc.stderr


def test_a_refused_configuration_stops_the_process_before_the_app_is_imported() -> None:
    """Fail fast: the settings are checked before FastAPI and the app's modules are imported
    (about 3 s of CPU; on a node at load 30 the refusal took more than this test's 60 s)."""
    proc = _start_in_production(CRM_ADMIN_PASSWORD="s3cret-enough-pass")
    assert proc.returncode != 0
    assert "CRM_JWT_PUBLIC_KEYS_FILE must name the gateway's public keys" in proc.stderr
    imported = _imported(proc.stderr)
    assert "gateway.settings" in imported
    assert not {"fastapi", "gateway.bootstrap", "crm_platform.app"} & imported
