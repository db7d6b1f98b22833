"""The faust worker authenticates like the services: its ``broker_credentials`` carry the
platform's Kafka security settings (SASL SCRAM/PLAIN over TLS, TLS, mTLS) to every client
faust builds. Checked on the app's configuration; the embedded broker speaks only PLAINTEXT."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from analytics.settings import AnalyticsSettings
from analytics.worker import build_faust_app
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth


def settings(**env: str) -> AnalyticsSettings:
    values: dict[str, Any] = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "MONGODB_URI": "mongodb://127.0.0.1:9",
        "CRM_ANALYTICS_APP_ID": f"crm-analytics-sec-{uuid.uuid4().hex[:8]}",
        **env,
    }
    return AnalyticsSettings(**values)


def faust_client_kwargs(**env: str) -> dict[str, Any]:
    app = build_faust_app(settings(**env))
    # What faust's aiokafka transport passes to each consumer, producer and admin client.
    return dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))


def test_plaintext_by_default() -> None:
    assert faust_client_kwargs() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_over_tls(mechanism: str) -> None:
    kwargs = faust_client_kwargs(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="analytics",
        KAFKA_SASL_PASSWORD="s3cret",
    )
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "analytics"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_context"].check_hostname


def test_scram_sha_512_is_the_default_sasl_mechanism() -> None:
    kwargs = faust_client_kwargs(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="analytics", KAFKA_SASL_PASSWORD="s3cret"
    )
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"


def test_tls_without_sasl() -> None:
    kwargs = faust_client_kwargs(KAFKA_SECURITY_PROTOCOL="SSL")
    assert kwargs["security_protocol"] == "SSL"
    assert kwargs["ssl_context"].check_hostname
