"""Unit tests without I/O: settings, OpenAPI rewriting, upstream error mapping, raw paths."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from crm_platform.testing import OFFLINE_SETTINGS
from gateway.api.proxy import upstream_path
from gateway.settings import DEV_ADMIN_PASSWORD, GatewaySettings
from gateway.upstream import (
    UpstreamError,
    Upstreams,
    UpstreamTimeout,
    UpstreamUnavailable,
    rewrite_openapi,
)
from pydantic import ValidationError
from starlette.requests import Request

# The gateway publishes the permission policy: a broker (plaintext allowed for these settings tests).
BASE = OFFLINE_SETTINGS


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A production key pair made the way an operator makes one."""
    from crm_platform.keys import new_key

    d = tmp_path_factory.mktemp("keys")
    new_key(d / "private.pem", d / "public.json")
    return {
        "CRM_JWT_PRIVATE_KEY_FILE": str(d / "private.pem"),
        "CRM_JWT_PUBLIC_KEYS_FILE": str(d / "public.json"),
        "CRM_PSEUDONYM_KEY": "an-install-secret-of-enough-length",
    }


def settings(**env: object) -> GatewaySettings:
    return GatewaySettings.model_validate({**BASE, **env})


def test_defaults() -> None:
    s = settings()
    assert s.service_name == "gateway"
    assert s.http_port == 8080
    assert s.database_name == "gateway"
    assert s.upstreams == {
        "leads": "http://127.0.0.1:8001",
        "sales": "http://127.0.0.1:8002",
        "service-desk": "http://127.0.0.1:8003",
        "analytics": "http://127.0.0.1:8004",
        "console": "http://127.0.0.1:8005",
    }
    assert s.bootstrap_admin_password == DEV_ADMIN_PASSWORD == "admin-dev-password"
    assert "admin-dev-password" not in repr(s)


def test_upstream_urls_from_env() -> None:
    s = settings(CRM_LEADS_URL="http://leads.crm.svc:8000/", CRM_SERVICE_DESK_URL="http://sd:1")
    assert s.upstreams["leads"] == "http://leads.crm.svc:8000"
    assert s.upstreams["service-desk"] == "http://sd:1"


def test_production_refuses_a_missing_admin_password(real_keys: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="CRM_ADMIN_PASSWORD must be set"):
        settings(CRM_ENV="production", **real_keys)


def test_production_refuses_the_dev_admin_password(real_keys: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="development password"):
        settings(CRM_ENV="production", CRM_ADMIN_PASSWORD=DEV_ADMIN_PASSWORD, **real_keys)


def test_production_with_a_real_admin_password(real_keys: dict[str, str]) -> None:
    s = settings(CRM_ENV="production", CRM_ADMIN_PASSWORD="s3cret-enough-pass", **real_keys)
    assert s.bootstrap_admin_password == "s3cret-enough-pass"
    assert "s3cret-enough-pass" not in repr(s)


def test_admin_password_must_meet_the_policy() -> None:
    with pytest.raises(ValidationError, match="at least 12"):
        settings(CRM_ADMIN_PASSWORD="short")


def test_production_refuses_to_start_without_real_keys(real_keys: dict[str, str], tmp_path: Path) -> None:
    password = {"CRM_ADMIN_PASSWORD": "s3cret-enough-pass"}
    with pytest.raises(ValidationError, match="CRM_JWT_PUBLIC_KEYS_FILE"):
        settings(CRM_ENV="production", **password)
    public_only = {
        "CRM_JWT_PUBLIC_KEYS_FILE": real_keys["CRM_JWT_PUBLIC_KEYS_FILE"],
        "CRM_PSEUDONYM_KEY": real_keys["CRM_PSEUDONYM_KEY"],
    }
    with pytest.raises(ValidationError, match="CRM_JWT_PRIVATE_KEY_FILE"):
        settings(CRM_ENV="production", **password, **public_only)
    not_a_key = tmp_path / "secret.pem"
    not_a_key.write_text("dev-only-secret-change-me-0123456789abcdef")
    with pytest.raises(ValidationError, match="signing key"):
        settings(
            CRM_ENV="production", **password, **{**real_keys, "CRM_JWT_PRIVATE_KEY_FILE": str(not_a_key)}
        )


def test_rewrite_openapi_points_servers_at_the_gateway_and_adds_bearer() -> None:
    doc = {"openapi": "3.1.0", "servers": [{"url": "http://10.0.0.5:8001"}], "paths": {}}
    out = rewrite_openapi(doc, "leads")
    assert out["servers"] == [{"url": "/api/leads", "description": "leads through the gateway"}]
    assert out["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert out["security"] == [{"bearer": []}]
    assert doc["servers"] == [{"url": "http://10.0.0.5:8001"}]  # the input is not mutated


def test_rewrite_openapi_keeps_a_service_s_own_security_schemes() -> None:
    doc = {"components": {"securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"}}}}
    out = rewrite_openapi(doc, "sales")
    assert out["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    assert "security" not in out
    assert out["servers"][0]["url"] == "/api/sales"


def _request(raw_path: bytes | None, path: str) -> Request:
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    if raw_path is not None:
        scope["raw_path"] = raw_path
    return Request(scope)


@pytest.mark.parametrize(
    ("raw", "path", "expected"),
    [
        (b"/api/leads/leads/1", "/api/leads/leads/1", "/leads/1"),
        (b"/api/leads/a%2Fb?x=1", "/api/leads/a/b", "/a%2Fb"),  # httpx puts the query in raw_path
        (b"/api/service%2Ddesk/cases", "/api/service-desk/cases", "/cases"),
        (b"/api/leads", "/api/leads", "/"),
        (b"/api/leads/", "/api/leads/", "/"),
        (None, "/api/leads/a b", "/a%20b"),
    ],
)
def test_upstream_path_keeps_the_client_s_encoding(raw: bytes | None, path: str, expected: str) -> None:
    assert upstream_path(_request(raw, path)) == expected


async def _forward_with(handler: httpx.MockTransport) -> httpx.Response | Exception:
    up = Upstreams({"leads": "http://leads"}, transport=handler)
    try:
        fwd = await up.forward(
            "leads",
            method="GET",
            raw_path="/x",
            query=b"",
            headers={},
            body=b"",
            client_host=None,
            scheme="http",
            host=None,
        )
        await fwd.aclose()
        assert fwd.response is not None, "a test's transport: httpx carries the request"
        return fwd.response
    except Exception as exc:  # noqa: BLE001 - the test asserts on whatever was raised
        return exc
    finally:
        await up.aclose()


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable, 503),
        (httpx.ConnectTimeout("slow connect"), UpstreamUnavailable, 503),
        (httpx.PoolTimeout("pool full"), UpstreamUnavailable, 503),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504),
        (httpx.WriteTimeout("slow"), UpstreamTimeout, 504),
        (httpx.RemoteProtocolError("closed"), UpstreamError, 502),
    ],
)
async def test_upstream_errors_map_to_gateway_statuses(
    error: Exception, expected: type[UpstreamError], status: int
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    result = await _forward_with(httpx.MockTransport(fail))
    assert type(result) is expected
    assert isinstance(result, UpstreamError)
    assert result.status_code == status
    assert result.service == "leads"


async def test_unknown_service_is_a_lookup_error() -> None:
    up = Upstreams({"leads": "http://leads"})
    with pytest.raises(LookupError):
        up.base_url("billing")
    await up.aclose()


async def test_password_hashing_uses_argon2id_and_verifies() -> None:
    from gateway.security import Passwords

    pw = Passwords()
    h = await pw.hash("correct horse battery")
    assert h.startswith("$argon2id$")
    assert "correct horse battery" not in h
    assert await pw.verify(h, "correct horse battery")
    assert not await pw.verify(h, "wrong horse battery")
    assert not await pw.verify(None, "dummy password for timing equalisation")  # no user, never ok
    assert not await pw.verify("not-a-hash", "x")
    assert not pw.needs_rehash(h)


class _CountingHasher(PasswordHasher):
    hashed = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        type(self).hashed += 1
        return super().hash(password, salt=salt)


def test_no_password_is_hashed_at_start_up_with_the_default_parameters() -> None:
    """Each argon2 hash takes 64 MiB for a moment: the start-up's dummy hash set the gateway's
    memory high-water mark (~164 MB). The default parameters' dummy hash is made beforehand,
    and it is what an unknown username's login verifies against (as costly as a real one)."""
    from gateway import security

    _CountingHasher.hashed = 0
    security.Passwords(_CountingHasher())
    assert _CountingHasher.hashed == 0
    from gateway.security import DUMMY_HASH, DUMMY_PASSWORD, Passwords

    assert not PasswordHasher().check_needs_rehash(DUMMY_HASH)  # the defaults' parameters
    assert PasswordHasher().verify(DUMMY_HASH, DUMMY_PASSWORD)
    cheap = Passwords(_CountingHasher(time_cost=1, memory_cost=8, parallelism=1))
    assert _CountingHasher.hashed == 1  # other parameters: its own dummy, as costly as its hashes
    assert not cheap.needs_rehash(cheap._dummy_hash)


def test_readme_documents_every_route_rule() -> None:
    from pathlib import Path

    from gateway.domain.routes import ROUTE_TABLE

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for r in ROUTE_TABLE:
        row = f"| {r.service} | {r.describe_methods()} | `{r.pattern.replace('|', chr(92) + '|')}` |"
        assert row in readme, f"README route table is missing: {row}"


def test_the_erasure_confirmations_consumer_is_patient() -> None:
    """No one waits within a second for a confirmation (an administrator reads a request's status):
    the gateway's only consumer takes the patient idle pause (crm_platform.kafka.be_patient)."""
    from gateway.bootstrap import _runtime, _upstreams

    s = settings()
    runtime, _ = _runtime(s, _upstreams(s))
    assert runtime.consumer is not None
    assert runtime.consumer.config.patient is True
