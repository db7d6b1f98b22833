"""Erasure's pure parts (crm_platform.erasure, crm_platform.audit.scrub): where a document's
people are, what an erased document looks like, and what scrubbing leaves. No I/O."""

from __future__ import annotations

from crm_platform.audit import ERASED, scrub
from crm_platform.erasure import (
    PERSON_HASHES,
    Person,
    Target,
    emails_in,
    erase_doc,
    hashes_of,
    mention_pattern,
    person_hashes,
    with_person_hashes,
)
from crm_platform.pseudonym import email_hash

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
