"""How every Kafka client authenticates and encrypts: TLS, SASL (SCRAM or PLAIN), mTLS.

One description, read from the environment, turned into the keyword arguments each
client library wants, so no client (aiokafka producers and consumers, kafka-python's
admin client, the faust worker, the bench and test tooling) can be built without it:

===========================  =================================================================
``KAFKA_SECURITY_PROTOCOL``  ``PLAINTEXT`` (default), ``SSL``, ``SASL_SSL``, ``SASL_PLAINTEXT``
``KAFKA_SASL_MECHANISM``     ``SCRAM-SHA-512`` (default with SASL), ``SCRAM-SHA-256``, ``PLAIN``
``KAFKA_SASL_USERNAME``      SASL user (Strimzi: the ``KafkaUser``'s name)
``KAFKA_SASL_PASSWORD``      its password (Strimzi: the user secret's ``password`` key)
``KAFKA_SSL_CAFILE``         CA bundle that signed the brokers' certificates (default: system)
``KAFKA_SSL_CERTFILE``       client certificate: mTLS (Strimzi ``tls`` authentication)
``KAFKA_SSL_KEYFILE``        its private key
``KAFKA_SSL_KEY_PASSWORD``   the key's password, if it has one
``KAFKA_SSL_CHECK_HOSTNAME`` ``true`` (default): the broker's certificate must name its host
===========================  =================================================================

Modes: TLS only (``SSL``); SASL SCRAM or PLAIN over TLS (``SASL_SSL``); mTLS (``SSL`` with a
client certificate and key). ``SASL_PLAINTEXT`` sends the password unencrypted and, like
``PLAINTEXT``, is refused when ``CRM_ENV=production`` unless ``CRM_KAFKA_ALLOW_PLAINTEXT=true``
says the network itself is trusted. The embedded development broker (noida-db) speaks
only ``PLAINTEXT``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: tuple[Mechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE = ("1", "true", "yes", "on")


class KafkaSecurityError(ValueError):
    """The Kafka security settings are incomplete, contradictory or unsafe."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol!r}: use one of {', '.join(PROTOCOLS)}"
            )
        if self.sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise KafkaSecurityError(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: use one of {', '.join(MECHANISMS)}"
                )
            if not self.sasl_username or not self.sasl_password:
                raise KafkaSecurityError(
                    f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise KafkaSecurityError(
                f"KAFKA_SASL_* settings are set but KAFKA_SECURITY_PROTOCOL={self.protocol} "
                "does not use SASL (use SASL_SSL)"
            )
        if not self.tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise KafkaSecurityError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={self.protocol} does not use TLS "
                "(use SSL or SASL_SSL)"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise KafkaSecurityError("mTLS needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        protocol = (get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        mechanism = get("KAFKA_SASL_MECHANISM")
        if mechanism is None and protocol.startswith("SASL_"):
            mechanism = "SCRAM-SHA-512"
        return cls(
            protocol=cast(Protocol, protocol),
            sasl_mechanism=cast(Mechanism, mechanism.upper()) if mechanism else None,
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=get("KAFKA_SASL_PASSWORD"),
            ssl_cafile=get("KAFKA_SSL_CAFILE"),
            ssl_certfile=get("KAFKA_SSL_CERTFILE"),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE"),
            ssl_key_password=get("KAFKA_SSL_KEY_PASSWORD"),
            ssl_check_hostname=(get("KAFKA_SSL_CHECK_HOSTNAME") or "true").lower() in _TRUE,
        )

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def encrypted(self) -> bool:
        return self.tls

    def describe(self) -> str:
        """For logs: the mode, never the password."""
        parts: list[str] = [self.protocol]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.ssl_certfile:
            parts.append("client certificate (mTLS)")
        return ", ".join(parts)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (CA, optional client certificate), or None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password)
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """For ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """For kafka-python's ``KafkaAdminClient`` / ``KafkaProducer`` / ``KafkaConsumer``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
        if self.sasl:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs


def refuse_plaintext_in_production(security: KafkaSecurity, env: str, allow_plaintext: bool) -> None:
    """Production talks to Kafka over TLS unless an operator explicitly says otherwise."""
    if env == "production" and not security.encrypted and not allow_plaintext:
        raise KafkaSecurityError(
            f"KAFKA_SECURITY_PROTOCOL={security.protocol} is unencrypted, refused with CRM_ENV=production: "
            "use SSL (optionally with a client certificate) or SASL_SSL, or set "
            "CRM_KAFKA_ALLOW_PLAINTEXT=true if the network is trusted"
        )


def aiokafka_security() -> dict[str, Any]:
    """The process's settings (environment) as aiokafka keyword arguments."""
    return KafkaSecurity.from_env().aiokafka_kwargs()


def kafka_python_security() -> dict[str, Any]:
    """The process's settings (environment) as kafka-python keyword arguments."""
    return KafkaSecurity.from_env().kafka_python_kwargs()
