"""Crypto-shredding's pure parts (crm_platform.shredding): the cipher, and what a sealed event
looks like on the wire. No I/O (the key store and the consumers: the services' integration
tests and tests/e2e/test_erasure.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from crm_contracts import uuids
from crm_contracts.events.common import SEALED_NAME, Consent, Contact, Money, SealedPerson, sealed_email
from crm_contracts.events.leads import LeadCapturedV2, LeadCapturedV3, LeadQualifiedV1, LeadQualifiedV2
from crm_contracts.events.sales import DealWonV2, DealWonV3, Product
from crm_contracts.registry import model_for
from crm_platform.shredding import (
    SEAL_RULES,
    OwnerKeys,
    PersonFields,
    UnreadableSeal,
    _owned_doc,
    _owned_docs,
    _random_pieces,
    _seal_wire,
    decode_key,
    encode_key,
    erased_fields,
    new_key,
    open_event,
    open_sealed,
    seal,
    sealed_event,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

ADA = PersonFields(email="ada@example.com", name="Ada Lovelace", phone="+44 20 7946 0000")
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def test_sealed_fields_open_with_their_key_and_hold_no_plaintext() -> None:
    key = new_key()
    sealed = seal(key, "p-1", "leads", ADA)
    wire = sealed.model_dump_json()
    for value in ("ada@example.com", "Ada Lovelace", "7946"):
        assert value not in wire
    assert open_sealed(key, sealed) == ADA


def test_two_seals_of_the_same_person_differ_nonce_and_ciphertext() -> None:
    key = new_key()
    first, second = seal(key, "p-1", "leads", ADA), seal(key, "p-1", "leads", ADA)
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "change",
    [
        {"person_id": "p-2"},  # sealed for another person: the associated data differs
        {"key_owner": "sales"},
        {"ciphertext": "AAAA" + "B" * 40},
        {"nonce": "not base64 !!!!!"},
    ],
)
def test_a_tampered_or_moved_seal_does_not_open(
    change: dict[str, str],
) -> None:
    key = new_key()
    sealed = seal(key, "p-1", "leads", ADA).model_copy(update=change)
    with pytest.raises(UnreadableSeal):
        open_sealed(key, sealed)


def test_another_key_does_not_open_it() -> None:
    sealed = seal(new_key(), "p-1", "leads", ADA)
    with pytest.raises(UnreadableSeal):
        open_sealed(new_key(), sealed)


def test_a_key_travels_as_44_base64_characters_and_comes_back_whole() -> None:
    key = new_key()
    assert len(key) == 32
    assert len(encode_key(key)) == 44
    assert decode_key(encode_key(key)) == key
    with pytest.raises(ValueError):
        decode_key(encode_key(b"short"))


def test_a_shredded_person_opens_to_stand_ins_derived_from_the_person_id_alone() -> None:
    erased = erased_fields("p-1")
    assert erased == erased_fields("p-1")
    assert erased != erased_fields("p-2")
    assert erased.email.endswith("@erased.example")
    assert erased.phone is None


def _sealed_payload(
    event_type: str, version: int, payload: dict[str, object]
) -> tuple[int, dict[str, object]]:
    rule = SEAL_RULES[(event_type, version)]
    people = rule.people(payload)
    seals = [seal(new_key(), f"p-{i}", "sales", p).model_dump() for i, p in enumerate(people)]
    return rule.sealed_version, rule.apply(payload, seals)


def _assert_no_plaintext(payload: dict[str, object]) -> None:
    wire = json.dumps(payload)
    for value in ("ada@example.com", "Ada Lovelace", "7946", "bob@example.com", "Bob Stone"):
        assert value not in wire


def _captured(**change: object) -> LeadCapturedV2:
    fields: dict[str, object] = {
        "lead_id": "lead-1",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "company": "Acme",
        "source_channel": "web",
        "consent": Consent(marketing_email=True),
        "merged": False,
    }
    return LeadCapturedV2.model_validate({**fields, **change})


def test_lead_captured_v2_becomes_a_valid_v3_with_stand_ins_of_the_lead_and_nothing_sealed() -> None:
    """Nobody opens lead.captured: its v3 carries no ``sealed_person`` and its stand-ins come from
    the lead id alone (docs/governance.md section 3, the twenty-first session's decision)."""
    plain = _captured()
    rule = SEAL_RULES[(plain.event_type, plain.version)]
    assert rule.people(plain.to_payload()) == [], "no person to make a key for"
    version, payload = _sealed_payload(plain.event_type, plain.version, plain.to_payload())
    assert "sealed_person" not in payload
    event = model_for(plain.event_type, version).model_validate(payload)
    assert isinstance(event, LeadCapturedV3)
    assert event.sealed_person is None
    assert (event.email, event.name) == (sealed_email("lead-1"), SEALED_NAME)
    _assert_no_plaintext(payload)
    # Not from the person: another person's capture of the same lead has the same stand-ins,
    # another lead's differ.
    other = _captured(email="bob@example.com", name="Bob Stone", merged=True)
    assert rule.apply(other.to_payload(), [])["email"] == event.email
    assert rule.apply(_captured(lead_id="lead-2").to_payload(), [])["email"] != event.email


class _NoDatabase:
    """A database that fails any use: what a transaction of captures must not touch."""

    def __getitem__(self, name: str) -> object:
        raise AssertionError(f"the seal used the database ({name})")


async def test_a_transaction_of_captures_is_stored_with_stand_ins_and_no_key_looked_up_or_made() -> None:
    """``seal_emitted`` over a capture (single, bulk, import: the same path) makes no key: no
    lookup, no insert, no key record; the events keep their ids, become v3 without a seal."""
    from types import SimpleNamespace

    from crm_contracts import envelope_for
    from crm_platform.shredding import seal_emitted

    emitted = [
        envelope_for(
            _captured(lead_id=f"lead-{n}", email=f"p{n}@example.com"), source="leads", correlation_id="c"
        )
        for n in range(3)
    ]
    ids = [e.event_id for e in emitted]
    tx = SimpleNamespace(source="leads", emitted=list(emitted), sealing_keys={})
    tx.emit = lambda *a, **k: pytest.fail("a key record emitted")
    await seal_emitted(_NoDatabase(), tx)
    assert [e.event_id for e in tx.emitted] == ids
    assert {e.schema_version for e in tx.emitted} == {3}
    for n, env in enumerate(tx.emitted):
        assert "sealed_person" not in env.payload
        assert env.payload["email"] == sealed_email(f"lead-{n}")
        assert f"p{n}@example.com" not in env.model_dump_json()
        LeadCapturedV3.model_validate(env.payload)


async def test_a_captured_v3_sealed_before_the_decision_is_still_valid_and_opens() -> None:
    """Events on the log from before carry ``sealed_person``: still valid, still opened."""
    key = new_key()
    person = PersonFields(email="ada@example.com", name="Ada Lovelace")
    old = {
        **_captured().to_payload(),
        "email": sealed_email("p-1"),
        "name": SEALED_NAME,
        "sealed_person": seal(key, "p-1", "leads", person).model_dump(),
    }
    event = LeadCapturedV3.model_validate(old)
    assert event.sealed_person is not None
    opened = await open_event(_Keys({"p-1": key}), event)
    assert type(opened) is LeadCapturedV2
    assert (opened.email, opened.name) == ("ada@example.com", "Ada Lovelace")
    new = LeadCapturedV3.model_validate(SEAL_RULES[("lead.captured", 2)].apply(_captured().to_payload(), []))
    unopened = await open_event(_Keys({}), new)
    assert isinstance(unopened, LeadCapturedV2)
    assert unopened.email == sealed_email("lead-1"), "nothing to open"


def test_lead_qualified_v1_seals_into_a_valid_v2_keeping_the_role() -> None:
    plain = LeadQualifiedV1(
        lead_id="lead-1",
        contact=Contact(name="Ada Lovelace", email="ada@example.com", phone="+44 20 7946 0000", role="CTO"),
        company="Acme",
        score=80,
        threshold=50,
        score_reasons=[],
        source_channel="web",
        behaviour_summary={},
        consent=Consent(marketing_email=True),
        qualified_at=NOW,
    )
    version, payload = _sealed_payload(plain.event_type, plain.version, plain.to_payload())
    event = model_for(plain.event_type, version).model_validate(payload)
    assert isinstance(event, LeadQualifiedV2)
    assert event.sealed_contact is not None
    assert event.contact.role == "CTO"
    assert event.contact.phone is None
    _assert_no_plaintext(payload)


def test_deal_won_v2_seals_each_contact_in_order() -> None:
    plain = DealWonV2(
        deal_id="deal-1",
        account_name="Acme",
        contacts=[
            Contact(name="Ada Lovelace", email="ada@example.com", phone="+44 20 7946 0000"),
            Contact(name="Bob Stone", email="bob@example.com", role="CFO"),
        ],
        products=[Product(sku="S", name="Seat", quantity=1, unit_price=10)],
        value=Money(amount=10),
        commitments=[],
        sales_owner="rep",
        won_at=NOW,
    )
    version, payload = _sealed_payload(plain.event_type, plain.version, plain.to_payload())
    event = model_for(plain.event_type, version).model_validate(payload)
    assert isinstance(event, DealWonV3)
    assert [s.person_id for s in event.sealed_contacts] == ["p-0", "p-1"]
    assert [c.role for c in event.contacts] == [None, "CFO"]
    _assert_no_plaintext(payload)


def test_a_deal_whose_seals_do_not_match_its_contacts_is_refused() -> None:
    sealed = seal(new_key(), "p-1", "sales", ADA)
    with pytest.raises(ValueError, match="one entry per contact"):
        DealWonV3(
            deal_id="deal-1",
            account_name="Acme",
            contacts=[],
            sealed_contacts=[SealedPerson.model_validate(sealed.model_dump())],
            products=[Product(sku="S", name="Seat", quantity=1, unit_price=10)],
            value=Money(amount=10),
            commitments=[],
            sales_owner="rep",
            won_at=NOW,
        )


def test_a_batchs_new_keys_and_nonces_are_fresh_whole_and_open_what_they_seal() -> None:
    """A batch draws its people's ids, keys and its seals' nonces in one call each: every
    piece has its full size, none repeats, and a seal made with a drawn nonce opens."""
    digests = [f"{n:064x}" for n in range(200)]
    docs = _owned_docs("leads", digests)
    assert [d["_id"] for d in docs] == [f"own:leads:{d}" for d in digests]
    assert [d["email_hash"] for d in docs] == digests
    keys = [bytes(d["key"]) for d in docs]
    assert {len(k) for k in keys} == {32}
    assert len(set(keys)) == len(keys)
    ids = [d["person_id"] for d in docs]
    assert {len(i) for i in ids} == {32}
    assert len(set(ids)) == len(ids)
    assert {(d["owner"], d["shared"]) for d in docs} == {("leads", False)}
    nonces = list(_random_pieces(12, 300))
    assert {len(n) for n in nonces} == {12}
    assert len(set(nonces)) == 300
    wire = _seal_wire(AESGCM(keys[0]), ids[0], "leads", ADA, nonces[0])
    assert base64.b64decode(wire["nonce"]) == nonces[0]
    assert open_sealed(keys[0], SealedPerson.model_validate(wire)) == ADA


def test_people_keyed_later_get_person_ids_that_sort_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Person ids are time-ordered: the key documents' ``by_person_id`` index takes a new person
    at its edge (on random ids an import's mongod wrote its pages back again and again:
    docs/performance.md, "Tenth session, import")."""
    clock = [1_796_522_728_387_000_000]

    def later() -> int:
        clock[0] += 1_000_000  # the next millisecond
        return clock[0]

    monkeypatch.setattr(uuids, "_time_ns", later)
    batches = [_owned_docs("leads", [f"{n:064x}", f"{n + 1:064x}"]) for n in range(0, 600, 2)]
    ids = [d["person_id"] for docs in batches for d in docs]
    ids.append(_owned_doc("leads", "f" * 64)["person_id"])
    assert ids == sorted(ids)
    assert {len(i) for i in ids} == {32}
    assert len(set(ids)) == len(ids)


class _Keys(OwnerKeys):
    """The owner's keys without a database: opens with the keys given."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        object.__setattr__(self, "keys", keys)

    async def open(self, sealed: SealedPerson) -> PersonFields:
        return open_sealed(self.keys[sealed.person_id], sealed)  # type: ignore[attr-defined]


def _qualified_v2(email: str = "ada@example.com") -> tuple[LeadQualifiedV1, LeadQualifiedV2, _Keys]:
    plain = LeadQualifiedV1(
        lead_id="lead-1",
        contact=Contact(name="Ada Lovelace", email=email, phone="+44 20 7946 0000", role="CTO"),
        company="Acme",
        score=80,
        threshold=50,
        score_reasons=[],
        source_channel="web",
        campaign="spring",
        behaviour_summary={},
        consent=Consent(marketing_email=True),
        qualified_at=NOW,
    )
    sealed, [issued] = sealed_event(plain, "leads")
    assert isinstance(sealed, LeadQualifiedV2)
    return plain, sealed, _Keys({issued.person_id: decode_key(issued.key)})


async def test_a_sealed_handoff_opens_to_its_v1_without_validating_the_handoff_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The drain opens every handoff: classification validated the v2 whole, so only the opened
    # contact is validated, not the handoff dumped and validated again as v1.
    plain, sealed, keys = _qualified_v2()
    validated: list[object] = []
    real = LeadQualifiedV1.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[LeadQualifiedV1], obj: object, **kwargs: object) -> LeadQualifiedV1:
        validated.append(obj)
        return real(cls, obj, **kwargs)

    monkeypatch.setattr(LeadQualifiedV1, "model_validate", classmethod(counting))
    opened = await open_event(keys, sealed)
    assert validated == []
    assert type(opened) is LeadQualifiedV1
    assert opened == plain
    assert opened.to_payload() == plain.to_payload()
    assert "sealed_contact" not in opened.to_payload()
    # Built as model_construct builds it (same fields in order, fields set, no extra or private
    # values), without model_construct's per-field search of aliases and defaults.
    constructed = LeadQualifiedV1.model_construct(opened.model_fields_set, **vars(opened))
    assert list(vars(opened)) == list(vars(constructed))
    assert (
        opened.model_fields_set
        == constructed.model_fields_set
        == sealed.model_fields_set - {"sealed_contact"}
    )
    assert (opened.__pydantic_extra__, opened.__pydantic_private__) == (None, None)
    assert repr(opened) == repr(constructed)

    def refused(cls: type[LeadQualifiedV1], *args: object, **kwargs: object) -> None:
        raise AssertionError("model_construct called")

    monkeypatch.setattr(LeadQualifiedV1, "model_construct", classmethod(refused))
    assert await open_event(keys, sealed) == plain
    # The opened contact by its model's validator directly, not through ``model_validate``'s frame.
    monkeypatch.setattr(Contact, "model_validate", classmethod(refused))
    assert await open_event(keys, sealed) == plain


async def test_a_sealed_handoff_whose_opened_email_is_invalid_is_refused() -> None:
    _, sealed, keys = _qualified_v2()
    assert sealed.sealed_contact is not None
    key = keys.keys[sealed.sealed_contact.person_id]  # type: ignore[attr-defined]
    bad = seal(key, sealed.sealed_contact.person_id, "leads", PersonFields(email="not an e-mail", name="Ada"))
    with pytest.raises(ValidationError):
        await open_event(keys, sealed.model_copy(update={"sealed_contact": bad}))


def test_sealed_fields_open_by_pydantic_cores_parser_to_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # json.loads was 1.75 us of every opened person, pydantic-core's parser 0.26 (docs/performance.md,
    # nineteenth session, drainsales); the same values, escapes and all, and a plaintext that is
    # not the sealer's still refused.
    people = [ADA, PersonFields(email="zoë@exämple.com", name='Ada "\\" \u2603', phone=None)]
    key = new_key()
    sealed = [seal(key, f"p-{i}", "leads", p) for i, p in enumerate(people)]

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("json.loads called")

    monkeypatch.setattr(json, "loads", refused)
    assert [open_sealed(key, s) for s in sealed] == people
    nonce = b"\x00" * 12
    for plain in (b"[1]", b"{", b'{"n": "x"}', b"\xff"):
        cipher = base64.b64encode(AESGCM(key).encrypt(nonce, plain, b"leads\x00p-9")).decode()
        odd = sealed[0].model_copy(
            update={"person_id": "p-9", "nonce": base64.b64encode(nonce).decode(), "ciphertext": cipher}
        )
        with pytest.raises(UnreadableSeal):
            open_sealed(key, odd)
