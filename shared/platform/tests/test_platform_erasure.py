"""Erasure's pure parts (crm_platform.erasure, crm_platform.audit.scrub): where a document's
people are, what an erased document looks like, and what scrubbing leaves. No I/O."""

from __future__ import annotations

from types import SimpleNamespace

from crm_contracts import envelope_for
from crm_platform.audit import ERASED, scrub
from crm_platform.erasure import (
    PERSON_HASHES,
    Person,
    Rechecks,
    Target,
    emails_in,
    erase_doc,
    hashes_of,
    mention_pattern,
    person_hashes,
    person_query,
    recheck_delay,
    transaction_bound,
    with_person_hashes,
)
from crm_platform.pseudonym import email_hash
from crm_platform.shredding import held_key_of, is_held_key_id, sealed_event
from crm_platform.testing import lead_qualified

OPPORTUNITIES = Target("opportunities", emails=("contacts.email",), clear=("notes", "custom"))
ADA = "ada@example.com"
BOB = "bob@example.com"


def _opportunity() -> dict[str, object]:
    return {
        "_id": "opp-1",
        "account_name": "Acme",
        "description": "Call Ada Lovelace on +44 20 7946 0000 about the renewal",
        "notes": "Ada prefers mornings",
        "custom": {"nickname": "Countess", "seats": 3},
        "contacts": [
            {"name": "Ada Lovelace", "email": ADA, "phone": "+44 20 7946 0000", "role": "CTO"},
            {"name": "Bob Stone", "email": BOB, "phone": None},
        ],
    }


def test_the_hashes_of_a_document_are_those_of_every_email_it_holds() -> None:
    doc = with_person_hashes(_opportunity(), OPPORTUNITIES)
    assert emails_in(doc, OPPORTUNITIES.emails) == [ADA, BOB]
    assert doc[PERSON_HASHES] == sorted([email_hash(ADA), email_hash(BOB)])
    assert person_hashes(" Ada@Example.com ", None, "") == [email_hash(ADA)]


def test_erasing_one_person_keeps_the_others_and_clears_free_text() -> None:
    person = Person()
    erased = erase_doc(_opportunity(), OPPORTUNITIES, email_hash(ADA), False, person)
    ada, bob = erased["contacts"]
    assert ada["email"].startswith("erased-")
    assert ada["email"].endswith("@erased.example")
    assert ada["name"].startswith("Erased person ")
    assert ada["phone"] is None
    assert ada["role"] == "CTO"  # the role in the deal is not the person
    assert bob == {"name": "Bob Stone", "email": BOB, "phone": None}
    assert erased["notes"] is None
    assert erased["custom"] is None  # any type: a text custom field may be about the person
    assert erased[PERSON_HASHES] == [email_hash(BOB)]
    assert person.values == {ADA, "Ada Lovelace", "+44 20 7946 0000"}
    assert hashes_of(erased, OPPORTUNITIES) == [email_hash(BOB)]


def test_a_document_named_by_id_loses_every_person() -> None:
    erased = erase_doc(_opportunity(), OPPORTUNITIES, None, True, Person())
    assert all(c["email"].endswith("@erased.example") for c in erased["contacts"])
    assert erased[PERSON_HASHES] == []


def test_mentions_of_the_person_are_scrubbed_everywhere_but_ids_and_keys() -> None:
    person = Person()
    erased = erase_doc(_opportunity(), OPPORTUNITIES, email_hash(ADA), False, person)
    clean = scrub(erased, mention_pattern(person.values))
    assert clean["description"] == f"Call {ERASED} on {ERASED} about the renewal"
    assert clean["_id"] == "opp-1"
    assert clean["account_name"] == "Acme"
    text = repr(clean)
    assert "Ada Lovelace" not in text
    assert ADA not in text
    assert "7946" not in text


def test_short_values_are_not_searched_in_free_text() -> None:
    """A two-letter name would erase every word containing it."""
    pattern = mention_pattern({"Al", "al@example.com"})
    assert scrub("Always call al@example.com", pattern) == f"Always call {ERASED}"
    assert mention_pattern({"Al"}) is None


INBOX = Target("inbox", emails=("handoff.contact.email",), by_held_key=True)


def test_a_sealed_handoff_names_its_person_by_the_held_key_that_opens_it() -> None:
    """What an item stored from an opened handoff names its person by instead of the hash: the
    held key's id (the key the holder stores as ``held:<owner>:<person id>``); a plaintext handoff
    names none (its item keeps the hash)."""
    plain = lead_qualified("lead-1")
    sealed, [key] = sealed_event(plain, "leads")
    held = held_key_of(envelope_for(sealed, source="leads", correlation_id="c"))
    assert held == f"held:leads:{key.person_id}"
    assert held is not None
    assert is_held_key_id(held)
    assert not is_held_key_id(email_hash(ADA)), "a hash is never taken for a held key's id"
    assert held_key_of(envelope_for(plain, source="leads", correlation_id="c")) is None


def test_a_person_is_matched_by_their_hash_or_by_the_ids_of_the_held_keys_that_learned_it() -> None:
    digest = email_hash(ADA)
    assert person_query(digest) == {PERSON_HASHES: digest}
    held = ["held:leads:0190aa", "held:leads:0190ab"]
    assert person_query(digest, held) == {PERSON_HASHES: {"$in": [digest, *held]}}


def test_an_item_named_by_its_held_key_is_erased_and_named_by_nothing_after() -> None:
    """An erased item keeps no way back to the person: the held key's id leaves ``person_hashes``
    with the hash it stood for (a request filed again finds nothing: idempotent)."""
    doc: dict[str, object] = {
        "_id": "item-1",
        "handoff": {"contact": {"name": "Ada Lovelace", "email": ADA, "phone": None}},
        PERSON_HASHES: ["held:leads:0190aa"],
    }
    person = Person()
    erased = erase_doc(doc, INBOX, email_hash(ADA), False, person)
    assert erased["handoff"]["contact"]["email"].endswith("@erased.example")
    assert erased[PERSON_HASHES] == []
    assert person.values == {ADA, "Ada Lovelace"}


def test_a_transaction_can_commit_until_its_lifetime_and_one_abort_pass_after() -> None:
    """mongod's abort pass runs every half of transactionLifetimeLimitSeconds, 1 s to 60 s."""
    assert transaction_bound(60) == 90
    assert transaction_bound(1) == 2  # the pass at least every second
    assert transaction_bound(300) == 360  # at most every minute


def test_a_recheck_is_due_two_bounds_and_the_margin_after_it_was_recorded() -> None:
    """The erasure's own transaction commits within one bound of the record; every transaction
    that read the person before that commit ends within one bound more."""
    assert recheck_delay(60) == 2 * 90 + 10
    assert recheck_delay(60, margin=0) == 180


async def test_the_recheck_delay_is_the_settings_else_the_servers_and_the_poll_follows_it() -> None:
    async def answer(_cmd: object) -> dict[str, object]:  # getParameter, as mongod answers it
        return {"transactionLifetimeLimitSeconds": 30, "ok": 1.0}

    server = _database(answer)
    assert await Rechecks(delay=2.0).resolve(server) == 2.0
    assert await Rechecks().resolve(server) == recheck_delay(30)
    assert Rechecks(delay=2.0).poll_seconds == 0.1
    assert Rechecks(delay=recheck_delay(60)).poll_seconds == 9.5
    assert Rechecks(delay=0.0).poll_seconds == 0.05


async def test_a_server_that_does_not_say_its_transaction_lifetime_is_taken_at_mongods_default() -> None:
    from pymongo.errors import OperationFailure

    async def refuse(_cmd: object) -> dict[str, object]:  # a user without the getParameter privilege
        raise OperationFailure("not authorized on admin to execute command", code=13)

    assert await Rechecks().resolve(_database(refuse)) == recheck_delay(60)


def _database(command: object) -> object:
    """What ``Rechecks.resolve`` uses of a database: ``db.client.admin.command``."""
    return SimpleNamespace(client=SimpleNamespace(admin=SimpleNamespace(command=command)))
