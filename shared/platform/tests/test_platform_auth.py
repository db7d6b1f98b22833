"""Tokens without I/O: asymmetric signing, forged and expired tokens, key rotation, revocation,
development keys and the production settings that refuse to start without real keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from crm_platform import auth as auth_module
from crm_platform.app import token_verifier
from crm_platform.auth import (
    CLOCK_SKEW_SECONDS,
    AuthError,
    Principal,
    RevocationFeed,
    RevocationList,
    TokenIssuer,
    TokenVerifier,
)
from crm_platform.keys import (
    KeyFileError,
    ensure_dev_keys,
    load_private_key,
    load_public_keys,
    new_key,
    parse_jwks,
)
from crm_platform.settings import ServiceSettings
from crm_platform.testing import dev_signing_key, expired_token, forged_tokens, token_for
from httpcore._async import http11 as httpcore_http11
from pydantic import ValidationError

ALICE = Principal("u-alice", "alice", frozenset({"sales_rep"}))
BASE = {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "MONGODB_URI": "mongodb://127.0.0.1:1"}


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    new_key(tmp_path / "private.pem", tmp_path / "public.json")
    return tmp_path / "private.pem", tmp_path / "public.json"


def issuer_and_verifier(private: Path, public: Path) -> tuple[TokenIssuer, TokenVerifier]:
    key = load_private_key(private)
    return TokenIssuer(key, "crm-gateway", "crm"), TokenVerifier(
        load_public_keys(public), "crm-gateway", "crm"
    )


def test_a_signed_token_verifies_with_the_public_key_alone(pair: tuple[Path, Path]) -> None:
    issuer, verifier = issuer_and_verifier(*pair)
    issued = issuer.issue(ALICE, timedelta(minutes=15), session_id="s-1")
    p = verifier.verify(issued.token)
    assert (p.user_id, p.username, p.roles) == ("u-alice", "alice", {"sales_rep"})
    assert (p.token_id, p.session_id) == (issued.jti, "s-1")
    assert p.expires_at - p.issued_at == 15 * 60
    assert not hasattr(verifier, "issue"), "a verifier has no private key and cannot mint"


def test_every_service_trusts_the_install_s_key_and_nothing_else() -> None:
    verifier = token_verifier(ServiceSettings.model_validate({**BASE, "CRM_ENV": "test"}))
    assert verifier.verify(token_for(["admin"], "root")).username == "root"
    for how, forged in forged_tokens(["admin"]).items():
        with pytest.raises(AuthError) as refused:
            verifier.verify(forged)
        assert refused.value.args, how
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(expired_token(["admin"]))


def test_rotation_verifiers_accept_every_listed_key_by_kid(tmp_path: Path) -> None:
    jwks = tmp_path / "public.json"
    new_key(tmp_path / "old.pem", jwks)
    new_key(tmp_path / "new.pem", jwks)
    keys = load_public_keys(jwks)
    assert len(keys) == 2
    verifier = TokenVerifier(keys, "crm-gateway", "crm")
    for name in ("old.pem", "new.pem"):
        token = TokenIssuer(load_private_key(tmp_path / name), "crm-gateway", "crm").issue(
            ALICE, timedelta(minutes=5)
        )
        assert verifier.verify(token.token).user_id == "u-alice"
    old_kid = load_private_key(tmp_path / "old.pem").kid
    retired = TokenVerifier({k: v for k, v in keys.items() if k != old_kid}, "crm-gateway", "crm")
    old_token = TokenIssuer(load_private_key(tmp_path / "old.pem"), "crm-gateway", "crm").issue(
        ALICE, timedelta(minutes=5)
    )
    with pytest.raises(AuthError, match="unknown signing key"):
        retired.verify(old_token.token)


def test_a_jwks_whose_kid_is_not_the_thumbprint_is_refused(pair: tuple[Path, Path]) -> None:
    doc = json.loads(pair[1].read_text())
    doc["keys"][0]["kid"] = "someone-else"
    with pytest.raises(KeyFileError, match="thumbprint"):
        parse_jwks(doc)
    with pytest.raises(KeyFileError, match="Ed25519"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})


def test_revocation_by_token_id_and_by_user(pair: tuple[Path, Path]) -> None:
    issuer, verifier = issuer_and_verifier(*pair)
    first = issuer.issue(ALICE, timedelta(minutes=5))
    second = issuer.issue(ALICE, timedelta(minutes=5))
    verifier.revocations.replace(RevocationList(tokens={first.jti: first.expires_at}))
    with pytest.raises(AuthError, match="logged out"):
        verifier.verify(first.token)
    assert verifier.verify(second.token).user_id == "u-alice"
    verifier.revocations.replace(RevocationList(users={"u-alice": second.issued_at + 1}))
    with pytest.raises(AuthError, match="deactivated"):
        verifier.verify(second.token)


def test_a_remembered_token_still_expires_and_is_still_checked_against_revocations(
    pair: tuple[Path, Path],
) -> None:
    issuer, verifier = issuer_and_verifier(*pair)
    issued = issuer.issue(ALICE, timedelta(minutes=5))
    assert verifier.verify(issued.token).user_id == "u-alice"
    assert verifier.verify(issued.token).user_id == "u-alice"  # remembered: no second signature check
    verifier.revocations.replace(RevocationList(tokens={issued.jti: issued.expires_at}))
    with pytest.raises(AuthError, match="logged out"):
        verifier.verify(issued.token)
    verifier.revocations.replace(RevocationList())
    assert verifier.verify(issued.token).user_id == "u-alice"
    # Past its expiry (and the clock skew allowed), the remembered token is refused like any other.
    later = issued.expires_at + CLOCK_SKEW_SECONDS + 1
    verifier.clock = lambda: float(later)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(issued.token)


def test_only_the_exact_verified_token_is_remembered(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same header and claims with another signature (or tampered claims) is not the remembered
    token: it is verified, and refused."""
    issuer, verifier = issuer_and_verifier(*pair)
    issued = issuer.issue(ALICE, timedelta(minutes=5))
    verifier.verify(issued.token)
    head, claims, signature = issued.token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for tampered in (f"{head}.{claims}.{flipped}", f"{head}.{claims}x.{signature}"):
        with pytest.raises(AuthError, match="invalid token"):
            verifier.verify(tampered)
    # Only as many tokens as VERIFIED_TOKENS_KEPT are remembered; the oldest go first.
    monkeypatch.setattr(auth_module, "VERIFIED_TOKENS_KEPT", 3)
    tokens = [issuer.issue(ALICE, timedelta(minutes=5)).token for _ in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert list(verifier._verified) == tokens[-3:]


async def test_the_feed_follows_the_gateway_and_keeps_the_last_list_while_it_is_away() -> None:
    served: list[httpx.Response] = [
        httpx.Response(200, json={"users": [{"user_id": "u-1", "not_before": 100}], "tokens": []}),
        httpx.Response(503, json={"error": "down"}),
        httpx.Response(200, json={"users": [], "tokens": [{"jti": "t-1", "expires_at": 200}]}),
    ]
    target = RevocationList()
    feed = RevocationFeed("http://gateway/internal/revocations", target)
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: served.pop(0))) as client:
        assert await feed.refresh(client)
        assert target.users == {"u-1": 100}
        assert not await feed.refresh(client)
        assert target.users == {"u-1": 100}, "a failed poll keeps the last list"
        assert await feed.refresh(client)
        assert (target.users, target.tokens) == ({}, {"t-1": 200})


def test_development_keys_are_made_once_per_install_and_private(tmp_path: Path) -> None:
    first = ensure_dev_keys(tmp_path / "a")
    assert ensure_dev_keys(tmp_path / "a") == first
    assert first.private.read_bytes() == ensure_dev_keys(tmp_path / "a").private.read_bytes()
    assert stat.S_IMODE(first.private.stat().st_mode) == 0o600
    other = ensure_dev_keys(tmp_path / "b")
    assert other.private.read_bytes() != first.private.read_bytes(), "never a known key"
    assert load_private_key(first.private).kid in load_public_keys(first.public)


def test_the_test_helper_signs_with_the_development_key() -> None:
    assert dev_signing_key().kid in load_public_keys(ensure_dev_keys().public)


def test_production_refuses_to_start_without_real_keys(pair: tuple[Path, Path], tmp_path: Path) -> None:
    prod = {
        **BASE,
        "CRM_ENV": "production",
        "CRM_KAFKA_ALLOW_PLAINTEXT": True,  # Kafka security is another test's subject
        "CRM_REVOCATIONS_URL": "http://gateway:8080/internal/revocations",
        "CRM_PSEUDONYM_KEY": "an-install-secret-of-enough-length",
    }
    with pytest.raises(ValidationError, match="CRM_JWT_PUBLIC_KEYS_FILE"):
        ServiceSettings.model_validate(prod)
    bad = tmp_path / "bad.json"
    bad.write_text("dev-only-secret-change-me-0123456789abcdef")
    with pytest.raises(ValidationError, match="cannot read the public keys"):
        ServiceSettings.model_validate({**prod, "CRM_JWT_PUBLIC_KEYS_FILE": str(bad)})
    with pytest.raises(ValidationError, match="CRM_REVOCATIONS_URL"):
        ServiceSettings.model_validate(
            {**prod, "CRM_JWT_PUBLIC_KEYS_FILE": str(pair[1]), "CRM_REVOCATIONS_URL": None}
        )
    ok = ServiceSettings.model_validate({**prod, "CRM_JWT_PUBLIC_KEYS_FILE": str(pair[1])})
    assert ok.jwt_public_keys_file == pair[1]


async def test_the_audit_operation_names_the_route_without_parsing_the_url(pair: tuple[Path, Path]) -> None:
    """``current_principal`` names the request's operation by its route's template; the URL is
    only built for a request without a route (building it parses the whole URL per request)."""
    from types import SimpleNamespace

    from crm_platform import audit
    from starlette.requests import Request

    issuer, verifier = issuer_and_verifier(*pair)
    token = issuer.issue(ALICE, timedelta(minutes=5)).token
    app = SimpleNamespace(state=SimpleNamespace(token_verifier=verifier))
    # No "path", "server" or "scheme": building request.url would raise.
    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "route": SimpleNamespace(path="/leads/{lead_id}"),
        "app": app,
    }
    principal = await auth_module.current_principal(Request(scope))
    assert principal.user_id == "u-alice"
    assert audit.operation_var.get() == "POST /leads/{lead_id}"


async def test_the_feed_keeps_its_connection_to_the_gateway_from_poll_to_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx's default keep-alive (5 s) is the poll's period: each poll opened a new connection.
    httpx's clock is stepped by a poll's period and a second between the polls."""
    body = b'{"users": [], "tokens": []}'
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(head % len(body) + body)
                await writer.drain()

    now = [1000.0]
    monkeypatch.setattr(httpcore_http11, "time", SimpleNamespace(monotonic=lambda: now[0]))
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    feed = RevocationFeed(f"http://127.0.0.1:{port}/internal/revocations", RevocationList())
    try:
        async with feed.client() as client:
            for _ in range(3):
                assert await feed.refresh(client)
                now[0] += feed.poll_seconds + 1.0
    finally:
        server.close()
    assert connections == 1
