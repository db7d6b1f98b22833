"""The console's settings: where the gateway is, the session key and cookie rules.

The console has no database and publishes no events: its only upstream is the
gateway's public API (``CRM_CONSOLE_GATEWAY_URL``), called with the signed-in
user's own token.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import ClassVar

from crm_platform.keys import dev_keys_dir
from crm_platform.settings import ServiceSettings, http_port_field, service_name_field
from pydantic import Field, model_validator

SERVICE_NAME = "console"
DEFAULT_PORT = 8005
SESSION_KEY_NAME = "console-session.key"


class ConsoleSettings(ServiceSettings):
    uses_kafka: ClassVar[bool] = False
    service_name: str = service_name_field(SERVICE_NAME)
    http_port: int = http_port_field(DEFAULT_PORT)
    # No broker, no database: the platform's settings require the names, nothing uses them.
    kafka_bootstrap_servers: str = Field(default="unused", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    mongodb_uri: str = Field(default="unused", validation_alias="MONGODB_URI")

    gateway_url: str = Field(
        default="http://127.0.0.1:8080",
        validation_alias="CRM_CONSOLE_GATEWAY_URL",
        description="the gateway's public API as the console reaches it (in-cluster: http://gateway:8080)",
    )
    gateway_timeout_seconds: float = Field(default=10.0, validation_alias="CRM_CONSOLE_GATEWAY_TIMEOUT", gt=0)
    session_key_file: Path | None = Field(
        default=None,
        validation_alias="CRM_CONSOLE_SESSION_KEY_FILE",
        description="32+ random bytes that seal the session cookie (required in production)",
    )
    session_hours: float = Field(
        default=8.0,
        validation_alias="CRM_CONSOLE_SESSION_HOURS",
        gt=0,
        le=24,
        description="a session cookie older than this is refused (the gateway's session ends at 8 h)",
    )
    refresh_margin_seconds: float = Field(
        default=30.0, validation_alias="CRM_CONSOLE_REFRESH_MARGIN_SECONDS", ge=0, le=600
    )

    @model_validator(mode="after")
    def _session_key(self) -> ConsoleSettings:
        if self.session_key_file is None:
            if self.env == "production":
                raise ValueError(
                    "CRM_CONSOLE_SESSION_KEY_FILE must name the key that seals session cookies "
                    "when CRM_ENV=production (e.g. `head -c 32 /dev/urandom > console-session.key`)"
                )
            self.session_key_file = ensure_dev_session_key()
        if len(self.session_key()) < 32:
            raise ValueError(f"CRM_CONSOLE_SESSION_KEY_FILE {self.session_key_file}: needs at least 32 bytes")
        return self

    def session_key(self) -> bytes:
        assert self.session_key_file is not None
        try:
            return self.session_key_file.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"CRM_CONSOLE_SESSION_KEY_FILE {self.session_key_file}: {exc}") from None

    @property
    def secure_cookies(self) -> bool:
        """Cookies are Secure (HTTPS only) everywhere but on a developer's machine."""
        return self.env != "local"


def ensure_dev_session_key(directory: Path | None = None) -> Path:
    """This install's development session key (generated once, beside the token keys)."""
    target = (directory or dev_keys_dir()).parent / SESSION_KEY_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".console-key-", dir=target.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_urlsafe(48).encode())
    os.chmod(staging, 0o600)
    os.replace(staging, target) if not target.exists() else os.unlink(staging)
    return target
