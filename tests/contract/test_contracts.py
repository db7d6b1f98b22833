"""The contracts every department builds against: schemas, compatibility, envelope."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from crm_contracts import (
    ALL_EVENTS,
    HANDOFFS,
    REGISTRY,
    Envelope,
    UnknownEventError,
    decode,
    envelope_for,
)
from crm_contracts.compat import breaking_changes
from crm_contracts.compat import main as compat_main
from crm_contracts.schemas import SCHEMA_DIR, generate, schema_filename, stale_files
from crm_contracts.topics import TOPICS_BY_NAME
from pydantic import ValidationError

FIXTURES = Path(__file__).with_name("fixtures")


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_checked_in_schemas_match_the_models() -> None:
    assert stale_files() == [], "run: .venv/bin/python -m crm_contracts.schemas --write"


def test_every_event_version_is_compatible_with_its_previous_version() -> None:
    by_type: dict[str, list[int]] = {}
    for event_type, version in REGISTRY:
        by_type.setdefault(event_type, []).append(version)
    for event_type, versions in by_type.items():
        versions.sort()
        assert versions == list(range(1, len(versions) + 1)), f"{event_type}: gap in versions"
        for old, new in pairwise(versions):
            errors = breaking_changes(
                generate(REGISTRY[(event_type, old)]), generate(REGISTRY[(event_type, new)])
            )
            assert errors == [], f"{event_type} v{old} -> v{new}: {errors}"


def test_compat_gate_rejects_a_breaking_change_naming_each_field() -> None:
    old = json.loads((SCHEMA_DIR / "lead.qualified.v1.json").read_text())
    errors = breaking_changes(old, _load("lead.qualified.v2.broken.json"))
    assert "field 'score' removed" in errors
    assert any(e.startswith("field 'company' retyped: string -> integer") for e in errors)
    assert "field 'campaign' changed from optional to required" in errors
    assert "field 'region' added as required (new fields must be optional)" in errors
    assert any(e.startswith("field 'contact.name' retyped") for e in errors)
    assert len(errors) == 5


def test_compat_gate_accepts_an_added_optional_field() -> None:
    old = json.loads((SCHEMA_DIR / "lead.qualified.v1.json").read_text())
    assert breaking_changes(old, _load("lead.qualified.v2.compatible.json")) == []


def test_compat_cli_exit_code_is_the_deploy_gate(capsys: pytest.CaptureFixture[str]) -> None:
    old = str(SCHEMA_DIR / "lead.qualified.v1.json")
    assert compat_main([old, str(FIXTURES / "lead.qualified.v2.compatible.json")]) == 0
    assert compat_main([old, str(FIXTURES / "lead.qualified.v2.broken.json")]) == 1
    assert "BREAKING: field 'score' removed" in capsys.readouterr().err


def test_every_event_publishes_to_a_declared_topic() -> None:
    for event in ALL_EVENTS:
        assert event.topic in TOPICS_BY_NAME, f"{event.event_type} -> undeclared {event.topic}"
        assert (SCHEMA_DIR / schema_filename(event)).exists()


def test_every_handoff_names_a_registered_event() -> None:
    types = {t for t, _ in REGISTRY}
    for handoff in HANDOFFS:
        assert handoff.event_type in types


def test_envelope_round_trip_and_typed_decode(sample_lead_qualified: object) -> None:
    env = envelope_for(sample_lead_qualified, source="leads", correlation_id="c-1")  # type: ignore[arg-type]
    again = Envelope.from_bytes(env.to_bytes())
    assert again == env
    assert decode(again) == sample_lead_qualified
    assert dict(env.headers())["event_type"] == b"lead.qualified"


def test_an_event_id_is_any_uuid_the_version_7_ones_made_now_and_the_version_4_ones_made_before(
    sample_lead_qualified: object,
) -> None:
    """Events emitted now carry a version-7 (time-ordered) id; the version-4 ids of events made
    before stay valid on the wire (a replay, a dead letter sent again, a topic's retention),
    and the envelope's schema says a UUID, no version (docs/asyncapi)."""
    made = envelope_for(sample_lead_qualified, source="leads", correlation_id="c-1")  # type: ignore[arg-type]
    assert made.event_id.version == 7
    for old_id in ("3f2b8c1e-9a4d-4e7f-b1c2-5d6e7f8a9b0c", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"):
        wire = json.loads(made.to_bytes())
        wire["event_id"] = old_id  # version 4, and version 1: any UUID is an event id
        again = Envelope.from_bytes(json.dumps(wire).encode())
        assert str(again.event_id) == old_id
        assert decode(again) == sample_lead_qualified
        assert dict(again.headers())["event_id"] == old_id.encode()
    schema = Envelope.model_json_schema()["properties"]["event_id"]
    assert (schema["type"], schema["format"]) == ("string", "uuid")
    assert not {"pattern", "const", "enum"} & schema.keys()
    with pytest.raises(ValidationError):
        Envelope.from_bytes(made.to_bytes().replace(str(made.event_id).encode(), b"not-a-uuid"))


def test_unknown_version_is_refused_with_the_known_ones() -> None:
    env = Envelope(
        event_type="lead.qualified",
        schema_version=7,
        occurred_at="2026-01-01T00:00:00Z",
        source="x",
        correlation_id="c",
        partition_key="k",
        payload={},
    )
    with pytest.raises(UnknownEventError, match=r"known versions: \[1, 2\]"):
        decode(env)


def _generated_addresses(n: int) -> list[str]:
    """Addresses near the shortcut's edges: case, dots, hyphens, digits, lengths, IDNA and
    special-use domains, characters it does not take, pretty names and whitespace."""
    rng = random.Random(20261205)
    tails = ["com", "io", "COM", "x", "123", "test", "local", "localhost", "onion", "arpa", "invalid",
             "example", "xn--p1ai", "de", "co.uk", "ab--cd.com", "a" * 63, "a" * 64]  # fmt: skip

    def part(chars: str, odd: str, sizes: list[int]) -> str:
        return "".join(rng.choice(odd if rng.random() < 0.03 else chars) for _ in range(rng.choice(sizes)))

    out = []
    for _ in range(n):
        local = part("ab9_%+-", "B.!#'~ ü\"", [1, 3, 8, 64, 65])
        if rng.random() < 0.3:  # a dot inside, as in first.last
            local = f"{local}.{part('ab9', '.', [1, 5])}"
        label = part("az9-", "Z._ é", [1, 4, 12, 63, 64])
        out.append(f"{local}@{label}.{rng.choice(tails)}")
    out += ["a@b.co", "x..y@b.co", ".x@b.co", "x.@b.co", "a@-b.co", "a@b-.co", "a@b.c0m", "a@b.test",
            "a@mail.local", "Ada <ada@b.co>", " ada@b.co", "ada@b.co ", "ada@xn--80ak6aa92e.com", "a@b",
            "a" * 64 + "@b.co", "a" * 65 + "@b.co", "a@" + "b" * 64 + ".co", "a_b%c+d-e@b.co",
            "a@" + "b." * 124 + "co", "a@" + "b." * 125 + "co"]  # fmt: skip
    return out


def test_the_plain_address_shortcut_answers_exactly_as_email_validator() -> None:
    """``normalized_email`` takes a shortcut for plain addresses; every answer (the normalised
    address, or a refusal) is pydantic's own ``validate_email``'s."""
    from crm_contracts import email
    from pydantic.networks import validate_email
    from pydantic_core import PydanticCustomError

    def answer(check: Callable[[str], object], address: str) -> str:
        try:
            return str(check(address))
        except PydanticCustomError:
            return "refused"

    addresses = _generated_addresses(3000)
    taken = [a for a in addresses if email._plain(a)]
    assert len(taken) > 150, "the shortcut is taken often enough to be tested"
    email.normalized_email.cache_clear()
    differ = [
        (a, ours, theirs)
        for a in addresses
        if (ours := answer(email.normalized_email, a))
        != (theirs := answer(lambda x: validate_email(x)[1], a))
    ]
    assert not differ, differ[:10]


def test_the_special_use_domains_are_one_set_and_suffix_check_that_follows_the_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut refuses a special-use domain or a subdomain of one with a set look-up and one
    ``endswith``, not a string built per name for every address (1.1 us of each address opened in
    a drained handoff); a list changed by the application is followed."""
    from crm_contracts import email

    names = list(email.SPECIAL_USE_DOMAIN_NAMES)
    assert email._plain("ada@mail.example.com")
    assert not email._plain("ada@mail.test")
    assert not email._plain("ada@b.local")

    class NotWalked(list[str]):
        def __iter__(self) -> Any:
            raise AssertionError("the special-use names were walked for an address")

    monkeypatch.setattr(email, "SPECIAL_USE_DOMAIN_NAMES", NotWalked(names))
    assert email._plain("ada@mail.example.com")
    assert not email._plain("ada@mail.test")
    assert not email._plain("ada@test")
    monkeypatch.setattr(email, "SPECIAL_USE_DOMAIN_NAMES", [*names, "example.com"])
    assert not email._plain("ada@mail.example.com")
    assert not email._plain("ada@example.com")
    assert email._plain("ada@example.org")


def test_an_email_is_validated_once_and_exactly_as_pydantic_validates_it() -> None:
    from crm_contracts.email import EmailStr as CachedEmailStr
    from crm_contracts.email import normalized_email
    from pydantic import EmailStr, TypeAdapter

    ours, theirs = TypeAdapter(CachedEmailStr), TypeAdapter(EmailStr)
    for address in ("Ada@Example.COM", "bob.o'neil@exämple.de", "x@y.io"):
        assert ours.validate_python(address) == theirs.validate_python(address)
    assert ours.json_schema() == theirs.json_schema() == {"type": "string", "format": "email"}
    before = normalized_email.cache_info().hits
    ours.validate_python("Ada@Example.COM")
    assert normalized_email.cache_info().hits == before + 1
    for _ in range(2):  # a refusal is never remembered as an answer
        with pytest.raises(ValidationError, match="not a valid email"):
            ours.validate_python("not-an-email")


def test_a_sealed_events_stand_in_address_is_taken_as_it_is_not_remembered() -> None:
    """A sealed event's stand-in (``sealed_email``, one per person) is valid and its own normalised
    form, as ``email_validator`` says, and is not remembered: a consumer folding sealed events would
    otherwise cycle the cache with addresses it never sees again. Near misses take the usual path."""
    import os

    from crm_contracts.email import EmailStr as CachedEmailStr
    from crm_contracts.email import normalized_email
    from crm_contracts.events.common import sealed_email
    from pydantic import EmailStr, TypeAdapter
    from pydantic.networks import validate_email

    ours, theirs = TypeAdapter(CachedEmailStr), TypeAdapter(EmailStr)
    stand_ins = [sealed_email(os.urandom(16).hex()) for _ in range(200)]
    normalized_email.cache_clear()
    for address in stand_ins:
        assert ours.validate_python(address) == address == validate_email(address)[1]
    assert normalized_email.cache_info().currsize == 0
    near = [
        "sealed-0123456789AB@sealed.example",
        "sealed-0123456789a@sealed.example",
        "Sealed-0123456789ab@Sealed.Example",
    ]
    for address in near:
        assert ours.validate_python(address) == theirs.validate_python(address)
    assert normalized_email.cache_info().currsize == len(near)


class _CountingValidator:
    """Stands in for a model's validator, counting what is validated through it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.inner, name)
        if not name.startswith("validate"):
            return attribute

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


@pytest.mark.parametrize("occurred_at", [None, "utc", "paris", "plus_two"])
def test_an_emitted_envelope_is_the_validated_one_without_validating_it_again(
    sample_lead_qualified: object, occurred_at: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``envelope_for`` wraps a validated event: its envelope equals what the model gives for the
    same values (fields, their order, the fields set, its JSON), without the model validating it
    again (4 us of every emitted event; docs/performance.md, "Fourteenth session, bulk")."""
    from datetime import UTC, datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    at = {
        None: None,
        "utc": datetime.now(UTC),
        "paris": datetime(2026, 3, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris")),
        "plus_two": datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2))),
    }[occurred_at]
    event = sample_lead_qualified
    counting = _CountingValidator(Envelope.__pydantic_validator__)
    monkeypatch.setattr(Envelope, "__pydantic_validator__", counting)
    built = envelope_for(event, source="leads", correlation_id="journey-1", causation_id=None, occurred_at=at)  # type: ignore[arg-type]
    assert counting.calls == 0
    monkeypatch.undo()
    given = {k: getattr(built, k) for k in built.model_fields_set}
    validated = Envelope(event_id=built.event_id, **given)
    assert built == validated
    assert list(built.__dict__) == list(validated.__dict__)
    assert built.model_fields_set == validated.model_fields_set - {"event_id"}
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.payload == event.to_payload()  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        built.source = "sales"  # type: ignore[misc]  # frozen, as validated


def test_an_envelope_the_model_would_refuse_is_still_refused(sample_lead_qualified: object) -> None:
    from datetime import datetime

    event = sample_lead_qualified
    for bad in (
        {"source": "", "correlation_id": "c"},
        {"source": "leads", "correlation_id": ""},
        {"source": "leads", "correlation_id": "c", "occurred_at": datetime(2026, 1, 1)},  # noqa: DTZ001 - no zone: refused
    ):
        with pytest.raises(ValidationError):
            envelope_for(event, **bad)  # type: ignore[arg-type]


def test_a_replaced_envelope_is_model_copys_without_validation(sample_lead_qualified: object) -> None:
    from crm_contracts.envelope import replaced

    envelope = envelope_for(sample_lead_qualified, source="leads", correlation_id="c")  # type: ignore[arg-type]
    changed = replaced(envelope, schema_version=2, payload={"sealed": True})
    expected = envelope.model_copy(update={"schema_version": 2, "payload": {"sealed": True}})
    assert changed == expected
    assert changed.model_fields_set == expected.model_fields_set
    assert repr(changed) == repr(expected)
    assert envelope.schema_version == 1
    with pytest.raises(ValueError, match="not fields"):
        replaced(envelope, schema="x")


def test_a_payload_is_the_models_json_dump_from_its_serializer_directly(
    sample_lead_qualified: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``to_payload`` is ``model_dump(mode="json")`` without the wrapper's options passed at their
    defaults (0.6 us of every emitted event and every inbox item; docs/performance.md,
    nineteenth session, drainsales)."""
    from crm_contracts.events.leads import LeadQualifiedV2

    event = sample_lead_qualified
    sealed = LeadQualifiedV2.model_validate(
        {**event.model_dump(mode="json"), "contact": {"name": "x", "email": "p-1@sealed.example"}}  # type: ignore[attr-defined]
    )
    expected = [e.model_dump(mode="json") for e in (event, sealed)]  # type: ignore[attr-defined]

    def refused(self: object, **kwargs: object) -> None:
        raise AssertionError("model_dump called")

    monkeypatch.setattr(type(event), "model_dump", refused)
    monkeypatch.setattr(LeadQualifiedV2, "model_dump", refused)
    payloads = [e.to_payload() for e in (event, sealed)]  # type: ignore[attr-defined]
    assert payloads == expected
    assert [list(p) for p in payloads] == [list(p) for p in expected]
    assert json.dumps(payloads) == json.dumps(expected)
