"""Kafka security settings reach every client, in every mode; production refuses plaintext.

No broker here: the embedded one speaks only PLAINTEXT, so these tests check what each
client is built with (the keyword arguments and the TLS context), not a handshake.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from crm_platform import kafka as kafka_module
from crm_platform.kafka import ensure_topics, make_admin, make_consumer, make_producer
from crm_platform.kafka_security import KafkaSecurity, KafkaSecurityError
from crm_platform.settings import ServiceSettings
from kafka import admin as kafka_admin
from pydantic import ValidationError

BASE_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9093", "MONGODB_URI": "mongodb://db/?replicaSet=rs0"}
SECURITY_VARS = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_CHECK_HOSTNAME",
    "CRM_KAFKA_ALLOW_PLAINTEXT",
    "CRM_ENV",
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA/client certificate and its key (openssl, as an operator would make one)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("certs")
    cert, key = folder / "client.crt", folder / "client.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=crm-test",
            ),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return {"ca": str(cert), "cert": str(cert), "key": str(key)}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def modes(certs: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "plaintext": {},
        "tls": {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": certs["ca"]},
        "mtls": {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": certs["ca"],
            "KAFKA_SSL_CERTFILE": certs["cert"],
            "KAFKA_SSL_KEYFILE": certs["key"],
        },
        "scram": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SSL_CAFILE": certs["ca"],
            "KAFKA_SASL_USERNAME": "sales",
            "KAFKA_SASL_PASSWORD": "s3cret",
        },
        "plain": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "sales",
            "KAFKA_SASL_PASSWORD": "s3cret",
        },
    }


EXPECTED: dict[str, dict[str, Any]] = {
    "plaintext": {"security_protocol": "PLAINTEXT"},
    "tls": {"security_protocol": "SSL"},
    "mtls": {"security_protocol": "SSL"},
    "scram": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",  # the default SASL mechanism
        "sasl_plain_username": "sales",
        "sasl_plain_password": "s3cret",
    },
    "plain": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "sales",
        "sasl_plain_password": "s3cret",
    },
}
MODES = list(EXPECTED)


def check_context(mode: str, context: ssl.SSLContext | None) -> None:
    if mode in ("plaintext",):
        assert context is None
        return
    assert isinstance(context, ssl.SSLContext), mode
    assert context.verify_mode == ssl.CERT_REQUIRED, "the broker's certificate is always verified"
    assert context.check_hostname
    if mode != "plain":  # plain uses the system CAs; the others our CA
        assert any(c["subject"] == ((("commonName", "crm-test"),),) for c in context.get_ca_certs())


@pytest.mark.parametrize("mode", MODES)
def test_settings_become_the_keyword_arguments_of_both_client_libraries(
    mode: str, env: pytest.MonkeyPatch, certs: dict[str, str]
) -> None:
    for name, value in modes(certs)[mode].items():
        env.setenv(name, value)
    security = KafkaSecurity.from_env()
    for kwargs in (security.aiokafka_kwargs(), security.kafka_python_kwargs()):
        assert {k: v for k, v in kwargs.items() if k in EXPECTED[mode] or k.startswith("sasl")} == EXPECTED[
            mode
        ]
        check_context(mode, kwargs.get("ssl_context"))
    if mode == "mtls":
        # The client certificate is in the context: loading it again with a wrong key fails.
        assert security.ssl_certfile == certs["cert"]
        assert "client certificate (mTLS)" in security.describe()
    assert "s3cret" not in security.describe()


@pytest.mark.parametrize("mode", MODES)
async def test_every_aiokafka_client_is_built_with_them(
    mode: str, env: pytest.MonkeyPatch, certs: dict[str, str]
) -> None:
    for name, value in modes(certs)[mode].items():
        env.setenv(name, value)
    producer = make_producer("broker:9093", "test-producer")
    consumer = make_consumer("crm.leads.lead-qualified", bootstrap_servers="broker:9093", group_id="g")
    for client in (producer.client, consumer._client):
        assert client._security_protocol == EXPECTED[mode]["security_protocol"]
        assert client._sasl_mechanism == EXPECTED[mode].get("sasl_mechanism", "PLAIN")
        assert client._sasl_plain_username == EXPECTED[mode].get("sasl_plain_username")
        check_context(mode, client._ssl_context)


class _Refused(Exception):
    pass


@pytest.mark.parametrize("mode", MODES)
def test_the_admin_client_that_provisions_topics_is_built_with_them(
    mode: str, env: pytest.MonkeyPatch, certs: dict[str, str]
) -> None:
    for name, value in modes(certs)[mode].items():
        env.setenv(name, value)
    seen: list[dict[str, Any]] = []

    def recorder(**kwargs: Any) -> Any:
        seen.append(kwargs)
        raise _Refused

    env.setattr(kafka_module, "AIOKafkaAdminClient", recorder)  # the services' provisioning
    env.setattr(kafka_admin, "KafkaAdminClient", recorder)  # the bench's tools
    with pytest.raises(_Refused):
        ensure_topics("broker:9093")
    with pytest.raises(_Refused):
        make_admin("broker:9093", "bench")
    assert len(seen) == 2
    for kwargs in seen:
        assert kwargs["security_protocol"] == EXPECTED[mode]["security_protocol"]
        assert kwargs.get("sasl_plain_password") == EXPECTED[mode].get("sasl_plain_password")
        check_context(mode, kwargs.get("ssl_context"))


def test_the_platform_consumer_builds_its_client_with_the_factory() -> None:
    source = Path(kafka_module.__file__).with_name("consumer.py").read_text()
    assert "AIOKafkaConsumer(" not in source, "consumer.py must use crm_platform.kafka.make_consumer"
    assert "make_consumer(" in source


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "use one of PLAINTEXT, SSL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"}
            | {"KAFKA_SASL_USERNAME": "u"},
            "KAFKA_SASL_MECHANISM='GSSAPI'",
        ),
        ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "does not use SASL"),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "does not use TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"}, "needs both"),
    ],
)
def test_incomplete_or_contradictory_settings_fail_fast(
    variables: dict[str, str], message: str, env: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(KafkaSecurityError, match=message):
        KafkaSecurity.from_env()
    with pytest.raises(ValidationError, match=message):
        ServiceSettings()


def _production_token_settings(env: pytest.MonkeyPatch) -> None:
    """What production needs besides Kafka: the gateway's public keys and its revocation list."""
    from crm_platform.keys import ensure_dev_keys

    env.setenv("CRM_JWT_PUBLIC_KEYS_FILE", str(ensure_dev_keys().public))
    env.setenv("CRM_REVOCATIONS_URL", "http://gateway:8080/internal/revocations")
    env.setenv("CRM_PSEUDONYM_KEY", "an-install-secret-of-enough-length")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_production_refuses_unencrypted_kafka_unless_explicitly_allowed(
    protocol: str, env: pytest.MonkeyPatch
) -> None:
    env.setenv("CRM_ENV", "production")
    _production_token_settings(env)
    env.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    if protocol.startswith("SASL"):
        env.setenv("KAFKA_SASL_USERNAME", "u")
        env.setenv("KAFKA_SASL_PASSWORD", "p")
    with pytest.raises(ValidationError, match="refused with CRM_ENV=production"):
        ServiceSettings()
    env.setenv("CRM_KAFKA_ALLOW_PLAINTEXT", "true")
    assert ServiceSettings().kafka_security.protocol == protocol


def test_production_accepts_tls_and_a_service_without_kafka(
    env: pytest.MonkeyPatch, certs: dict[str, str]
) -> None:
    env.setenv("CRM_ENV", "production")
    _production_token_settings(env)
    env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("KAFKA_SASL_USERNAME", "sales")
    env.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = ServiceSettings()
    assert settings.kafka_security == KafkaSecurity.from_env()
    assert "s3cret" not in repr(settings)
    env.delenv("KAFKA_SECURITY_PROTOCOL")
    env.delenv("KAFKA_SASL_USERNAME")
    env.delenv("KAFKA_SASL_PASSWORD")

    class NoKafka(ServiceSettings):  # like the console, which publishes and consumes nothing
        uses_kafka: ClassVar[bool] = False

    assert NoKafka().kafka_security.protocol == "PLAINTEXT"


CLIENT_CLASSES = frozenset(
    {
        "AIOKafkaConsumer",
        "AIOKafkaProducer",
        "AIOKafkaAdminClient",
        "KafkaAdminClient",
        "KafkaConsumer",
        "KafkaProducer",
    }
)
# Probes of the embedded development broker, which speaks only PLAINTEXT.
PLAINTEXT_ONLY = frozenset({"shared/platform/src/crm_platform/devinfra/embedded.py"})


def _product_sources() -> list[Path]:
    root = Path(kafka_module.__file__).resolve().parents[4]
    folders = [*root.glob("shared/*/src"), *root.glob("services/*/src"), root / "bench", root / "scripts"]
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


@pytest.mark.tooling  # reads every product source file
def test_no_kafka_client_is_built_without_the_security_settings() -> None:
    """Every client construction outside the factories passes the security kwargs along."""
    import ast

    root = Path(kafka_module.__file__).resolve().parents[4]
    unsafe: list[str] = []
    for path in _product_sources():
        relative = str(path.relative_to(root))
        if relative in PLAINTEXT_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in CLIENT_CLASSES and not any(
                k.arg is None and "security" in ast.unparse(k.value).lower() for k in node.keywords
            ):
                unsafe.append(f"{relative}:{node.lineno} {name}(...)")
            if (
                name == "App"
                and "faust" in ast.unparse(node.func)
                and not any(k.arg == "broker_credentials" for k in node.keywords)
            ):
                unsafe.append(f"{relative}:{node.lineno} faust.App without broker_credentials")
    assert not unsafe, (
        "Kafka clients built without the security settings; use crm_platform.kafka.make_producer / "
        "make_consumer / make_admin, or pass **KafkaSecurity.from_env().aiokafka_kwargs() "
        "(kafka_python_kwargs() for kafka-python):\n" + "\n".join(unsafe)
    )
