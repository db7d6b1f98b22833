"""Settings shared by every service, read from the environment, failing fast.

Tokens are verified with the gateway's public keys (``CRM_JWT_PUBLIC_KEYS_FILE``, a
JWKS file). With ``CRM_ENV=production`` the file must be given and hold valid keys;
locally and in tests it defaults to this install's generated development keys
(``.local/keys``, see :mod:`crm_platform.keys`): there is no known default key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_platform.kafka_security import KafkaSecurity, refuse_plaintext_in_production
from crm_platform.keys import ensure_dev_keys, load_public_keys
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)
    # False for a service that never talks to Kafka (the gateway): its Kafka settings are not checked.
    uses_kafka: ClassVar[bool] = True
    # The gateway keeps the revocation list itself; every other service polls it.
    owns_revocations: ClassVar[bool] = False

    service_name: str = Field(default="service", validation_alias="CRM_SERVICE_NAME")
    env: Literal["local", "test", "production"] = Field(default="local", validation_alias="CRM_ENV")
    kafka_bootstrap_servers: str = Field(validation_alias="KAFKA_BOOTSTRAP_SERVERS", min_length=1)
    mongodb_uri: str = Field(validation_alias="MONGODB_URI", min_length=1)
    mongodb_database: str | None = Field(default=None, validation_alias="MONGODB_DATABASE")
    jwt_public_keys_file: Path | None = Field(default=None, validation_alias="CRM_JWT_PUBLIC_KEYS_FILE")
    jwt_issuer: str = Field(default="crm-gateway", validation_alias="CRM_JWT_ISSUER", min_length=1)
    jwt_audience: str = Field(default="crm", validation_alias="CRM_JWT_AUDIENCE", min_length=1)
    # Where the gateway publishes revoked tokens and users (GET /internal/revocations);
    # unset: this process enforces no revocation beyond token expiry (tests, tools).
    revocations_url: str | None = Field(default=None, validation_alias="CRM_REVOCATIONS_URL")
    revocation_poll_seconds: float = Field(
        default=5.0, validation_alias="CRM_REVOCATION_POLL_SECONDS", gt=0, le=300
    )
    http_host: str = Field(default="127.0.0.1", validation_alias="CRM_HTTP_HOST")
    http_port: int = Field(default=8000, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
    log_level: str = Field(default="INFO", validation_alias="CRM_LOG_LEVEL")
    # uvicorn's event loop and HTTP parser: "auto" takes uvloop and httptools (installed
    # with the platform); "asyncio" / "h11" are the pure-Python ones (docs/performance.md).
    http_loop: Literal["auto", "asyncio", "uvloop"] = Field(default="auto", validation_alias="CRM_HTTP_LOOP")
    http_parser: Literal["auto", "h11", "httptools"] = Field(
        default="auto", validation_alias="CRM_HTTP_PARSER"
    )
    # Kafka brokers hold an empty fetch for fetch.max.wait.ms; a broker that answers
    # at once makes an idle consumer spin. A pause after each empty fetch bounds that
    # (0 = rely on the broker, right for Apache Kafka). See kafka.pace_empty_fetches.
    consumer_idle_backoff_ms: int = Field(
        default=0, validation_alias="CRM_CONSUMER_IDLE_BACKOFF_MS", ge=0, le=1000
    )
    consumer_group: str | None = Field(default=None, validation_alias="CRM_CONSUMER_GROUP")
    # Records per partition in one fetched batch, stored in one transaction (group commit,
    # crm_platform.consumer): larger batches drain a backlog in fewer round trips.
    consumer_max_records: int = Field(default=250, validation_alias="CRM_CONSUMER_MAX_RECORDS", ge=1, le=2000)
    # Records of one fetch across partitions (what a consumer holds in memory at once).
    consumer_max_fetch_records: int = Field(
        default=750, validation_alias="CRM_CONSUMER_MAX_FETCH_RECORDS", ge=1, le=10000
    )
    # A consumer's offsets are committed this long after a batch ends, with those of the batches
    # ended meanwhile, in one request (crm_platform.consumer._Commits): at 25 handoffs/s an
    # OffsetCommit per handoff in each consumer a handoff passes became five a second. Records
    # stored and not committed yet when a process dies come again and are dropped as repeats.
    # 0: each batch's offsets committed as it ends.
    consumer_commit_gather_seconds: float = Field(
        default=0.2, validation_alias="CRM_CONSUMER_COMMIT_GATHER_SECONDS", ge=0, le=5
    )
    # Liveness (crm_platform.liveness): lag is sampled every consumer_watchdog_seconds; a
    # partition with lag whose committed offset does not move for consumer_stall_seconds
    # makes the consumer rejoin, and if it stays stalled as long again, the process exit.
    consumer_stall_seconds: float = Field(default=180.0, validation_alias="CRM_CONSUMER_STALL_SECONDS", gt=0)
    # An event sealed with a person key this department has not received yet is retried this
    # long, then dead-lettered ``person_key_missing`` (crm_platform.shredding).
    person_key_wait_seconds: float = Field(
        default=60.0, validation_alias="CRM_PERSON_KEY_WAIT_SECONDS", gt=0, le=600
    )
    # From an erasure request's erasure to its recheck, which matches the request once more after
    # every transaction that began before the erasure committed has ended (a handoff that read the
    # person before it: crm_platform.erasure.Rechecks). Unset: from the server's
    # transactionLifetimeLimitSeconds (190 s for its default 60). Never below what that gives.
    erasure_recheck_seconds: float | None = Field(
        default=None, validation_alias="CRM_ERASURE_RECHECK_SECONDS", ge=0, le=86400
    )
    consumer_watchdog_seconds: float = Field(
        default=5.0, validation_alias="CRM_CONSUMER_WATCHDOG_SECONDS", gt=0
    )
    # Kafka static membership (group.instance.id): a restarted member with the same id takes
    # its old place and partitions at once. One stable id per replica (StatefulSet pod name);
    # unset = dynamic membership. See consumer_instance_id_from_env().
    consumer_instance_id: str | None = Field(default=None, validation_alias="CRM_CONSUMER_INSTANCE_ID")
    # The relay's fallback poll: the committing transaction and the outbox's change stream
    # (another replica's events) wake it at once (crm_platform.outbox.OutboxRelay.watch_inserts);
    # the stream opens once a poll's read found another writer's row, which waited for this.
    outbox_poll_seconds: float = Field(default=5.0, validation_alias="CRM_OUTBOX_POLL_SECONDS", gt=0)
    # How long configuration read on every event (sales' SLA and roster, leads' scoring
    # rules) is kept in the process; other replicas see a change within it (crm_platform.cache).
    config_cache_seconds: float = Field(default=5.0, validation_alias="CRM_CONFIG_CACHE_SECONDS", ge=0)
    # crm_outbox_backlog and crm_broker_reachable are sampled on their own timers, so
    # they keep moving while the relay is stuck on a broker outage.
    outbox_backlog_sample_seconds: float = Field(
        default=5.0, validation_alias="CRM_OUTBOX_BACKLOG_SAMPLE_SECONDS", gt=0
    )
    broker_check_seconds: float = Field(default=15.0, validation_alias="CRM_BROKER_CHECK_SECONDS", gt=0)
    # How long a Kafka client's start may take (a consumer's includes joining its group): past it
    # the client is dropped and its owner (consumer, relay, receipt listener, outbox audit)
    # reconnects with a fresh one after its backoff (crm_platform.kafka.start_client).
    kafka_start_seconds: float = Field(default=30.0, validation_alias="CRM_KAFKA_START_SECONDS", gt=0)
    consumer_enabled: bool = Field(default=True, validation_alias="CRM_CONSUMER_ENABLED")
    provision_topics: bool = Field(default=True, validation_alias="CRM_PROVISION_TOPICS")
    topic_replication_factor: int | None = Field(
        default=None, validation_alias="CRM_TOPIC_REPLICATION_FACTOR", ge=1
    )
    # Kafka security for real clusters (crm_platform.kafka_security): every client gets it.
    kafka_security_protocol: str = Field(default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str | None = Field(default=None, validation_alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: str | None = Field(default=None, validation_alias="KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: str | None = Field(default=None, validation_alias="KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: str | None = Field(default=None, validation_alias="KAFKA_SSL_KEYFILE")
    kafka_ssl_key_password: SecretStr | None = Field(default=None, validation_alias="KAFKA_SSL_KEY_PASSWORD")
    kafka_ssl_check_hostname: bool = Field(default=True, validation_alias="KAFKA_SSL_CHECK_HOSTNAME")
    kafka_allow_plaintext: bool = Field(default=False, validation_alias="CRM_KAFKA_ALLOW_PLAINTEXT")
    # Handoff receipts (crm_platform.receipts): a handoff this service sent is
    # published again, with the same event id, when no receipt came back in time.
    handoff_receipts_enabled: bool = Field(default=True, validation_alias="CRM_HANDOFF_RECEIPTS_ENABLED")
    handoff_resend_after_seconds: float = Field(
        default=120.0, validation_alias="CRM_HANDOFF_RESEND_AFTER_SECONDS", gt=0
    )
    handoff_resend_max_backoff_seconds: float = Field(
        default=3600.0, validation_alias="CRM_HANDOFF_RESEND_MAX_BACKOFF_SECONDS", gt=0
    )
    handoff_resend_max_attempts: int = Field(
        default=8, validation_alias="CRM_HANDOFF_RESEND_MAX_ATTEMPTS", ge=0
    )
    handoff_resend_silent_after_seconds: float = Field(
        default=900.0, validation_alias="CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS", gt=0
    )
    handoff_check_seconds: float = Field(default=5.0, validation_alias="CRM_HANDOFF_CHECK_SECONDS", gt=0)
    # The codec of the outbox relay's producer batches (crm_platform.outbox): zstd (cramjam),
    # or lz4, gzip, snappy; "none" sends them uncompressed. Every consumer decodes any of them.
    outbox_compression: Literal["zstd", "lz4", "gzip", "snappy", "none"] = Field(
        default="zstd", validation_alias="CRM_OUTBOX_COMPRESSION"
    )
    # The outbox audit (crm_platform.outbox_audit): a publish this old is checked against
    # the log (the record at its acknowledged position) and published again if the broker
    # lost it; 0 turns the audit off. Checked every CRM_OUTBOX_AUDIT_SECONDS.
    outbox_audit_after_seconds: float = Field(
        default=30.0, validation_alias="CRM_OUTBOX_AUDIT_AFTER_SECONDS", ge=0
    )
    outbox_audit_seconds: float = Field(default=5.0, validation_alias="CRM_OUTBOX_AUDIT_SECONDS", gt=0)
    # Voice-of-the-customer action items (crm_platform.action_items): how often a
    # department's queue escalates overdue items to its manager.
    action_item_escalation_seconds: float = Field(
        default=60.0, validation_alias="CRM_ACTION_ITEM_ESCALATION_SECONDS", gt=0
    )
    # Retention (crm_platform.retention): the days each of the service's record types is kept
    # (JSON, e.g. {"contact": 1095}; a type not named is kept), and how often it is enforced.
    retention_days: dict[str, Annotated[int, Field(ge=1, le=36500)]] = Field(
        default_factory=dict, validation_alias="CRM_RETENTION_DAYS"
    )
    retention_every_seconds: float = Field(
        default=3600.0, validation_alias="CRM_RETENTION_EVERY_SECONDS", gt=0
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _retention_json(cls, value: Any) -> Any:
        """The JSON text of the environment variable, also when given as a value (tests)."""
        return json.loads(value) if isinstance(value, str) else value

    # HTTP edge (crm_platform.edge): bodies above this are refused with 413 before
    # they are read. Each database operation, and each whole transaction of an HTTP
    # request, must finish within the deadline (PyMongo client-side operation timeout, sent to the server
    # as maxTimeMS) or the request is answered 503 with Retry-After. Keep it well
    # below the clients' timeouts (the gateway's upstream timeout, 30 s, included).
    max_request_bytes: int = Field(
        default=1_048_576, validation_alias="CRM_MAX_REQUEST_BYTES", ge=1024, le=1_073_741_824
    )
    # Routes a service declares as uploads (create_app's ``upload_paths``, e.g. leads'
    # import file) stream their body instead of reading it whole; they get this limit.
    max_upload_bytes: int = Field(
        default=4_294_967_296, validation_alias="CRM_MAX_UPLOAD_BYTES", ge=1024, le=1_099_511_627_776
    )
    db_deadline_seconds: float = Field(default=5.0, validation_alias="CRM_DB_DEADLINE_SECONDS", gt=0, le=120)
    retry_after_seconds: int = Field(default=5, validation_alias="CRM_RETRY_AFTER_SECONDS", ge=1, le=3600)
    # Idempotency-Key records (crm_platform.idempotency) are kept this long.
    idempotency_ttl_hours: int = Field(
        default=24, validation_alias="CRM_IDEMPOTENCY_TTL_HOURS", ge=1, le=24 * 30
    )

    # The install-wide key of crm_platform.pseudonym's keyed hash (pseudonyms, erasure requests'
    # and stored email_hash values). One value for every service; refused at its development
    # default when CRM_ENV=production. Rotating it changes every hash (docs/governance.md).
    pseudonym_key: SecretStr = Field(
        default=SecretStr(DEV_PSEUDONYM_KEY), validation_alias="CRM_PSEUDONYM_KEY", min_length=16
    )

    # make run's demo history only (crm_platform.clock, "The demo clock"): requests may set
    # their time with X-CRM-Demo-Time and consumed events take effect at their own time.
    demo_clock: bool = Field(default=False, validation_alias="CRM_DEMO_CLOCK")

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> ServiceSettings:
        if self.demo_clock and self.env == "production":
            raise ValueError(
                "CRM_DEMO_CLOCK lets a request set the service's time: never with CRM_ENV=production"
            )
        if self.uses_kafka:
            refuse_plaintext_in_production(self.kafka_security, self.env, self.kafka_allow_plaintext)
        return self

    @model_validator(mode="after")
    def _token_keys(self) -> ServiceSettings:
        if self.jwt_public_keys_file is None:
            if self.env == "production":
                raise ValueError(
                    "CRM_JWT_PUBLIC_KEYS_FILE must name the gateway's public keys (a JWKS file) "
                    "when CRM_ENV=production"
                )
            self.jwt_public_keys_file = ensure_dev_keys().public
        load_public_keys(self.jwt_public_keys_file)  # unreadable or not Ed25519: refuse to start
        if self.env == "production" and not self.owns_revocations and not self.revocations_url:
            raise ValueError(
                "CRM_REVOCATIONS_URL must point at the gateway's /internal/revocations when "
                "CRM_ENV=production (otherwise logout and deactivation would not reach this service)"
            )
        return self

    @model_validator(mode="after")
    def _pseudonym_key(self) -> ServiceSettings:
        if self.env == "production" and self.pseudonym_key.get_secret_value() == DEV_PSEUDONYM_KEY:
            raise ValueError(
                "CRM_PSEUDONYM_KEY must be set to the install's secret when CRM_ENV=production "
                "(the development key is public: anyone could recompute the hash of an e-mail)"
            )
        return self

    @property
    def kafka_security(self) -> KafkaSecurity:
        """The same settings the client factories read from the environment (validated here)."""
        mechanism = self.kafka_sasl_mechanism
        if mechanism is None and self.kafka_security_protocol.upper().startswith("SASL_"):
            mechanism = "SCRAM-SHA-512"
        return KafkaSecurity(
            protocol=self.kafka_security_protocol.upper(),  # type: ignore[arg-type]  # checked by KafkaSecurity
            sasl_mechanism=mechanism.upper() if mechanism else None,  # type: ignore[arg-type]
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_key_password=(
                self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None
            ),
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    @property
    def group_id(self) -> str:
        return self.consumer_group or self.service_name

    @property
    def database_name(self) -> str:
        return self.mongodb_database or self.service_name.replace("-", "_")


def service_name_field(name: str) -> Any:
    """A service's ``service_name``: its name, unless ``CRM_SERVICE_NAME`` says otherwise."""
    return Field(default=name, validation_alias="CRM_SERVICE_NAME")


def http_port_field(port: int) -> Any:
    """A service's ``http_port``: its default port, unless ``CRM_HTTP_PORT`` says otherwise."""
    return Field(default=port, validation_alias="CRM_HTTP_PORT", ge=1, le=65535)
