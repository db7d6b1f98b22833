"""The install's one keyed hash of personal data (crm_platform.pseudonym), and its key's setting."""

from __future__ import annotations

import hashlib
import hmac

import crm_platform.pseudonym as pseudonym_module
import pytest
from crm_platform.pseudonym import (
    DEV_PSEUDONYM_KEY,
    email_hash,
    erased_email,
    is_hex_digest,
    keyed_hash,
    pseudonym,
)
from crm_platform.settings import ServiceSettings
from pydantic import ValidationError

KEY = "a-test-key-of-enough-length"


def test_the_hash_is_of_the_normalised_value_and_depends_on_the_key() -> None:
    assert email_hash(" Ada@Example.COM ", KEY) == email_hash("ada@example.com", KEY)
    assert email_hash("ada@example.com", KEY) != email_hash("ada@example.com", KEY + "x")
    assert is_hex_digest(email_hash("ada@example.com", KEY))
    assert keyed_hash("phone", "+1 (555) 010-2030", KEY) == keyed_hash("phone", "15550102030", KEY)
    assert keyed_hash("name", "  Ada   LOVELACE", KEY) == keyed_hash("name", "ada lovelace", KEY)


def test_a_keys_hmac_is_made_once_and_copied_for_each_value() -> None:
    """Two hashes per bulk-captured lead (its stored person hashes, its person key's lookup):
    the key's HMAC is set up once per key, not per value; the hashes are HMAC-SHA256's."""
    pseudonym_module._keyed.cache_clear()
    hashes = [keyed_hash("email", f"p{n}@example.com", KEY) for n in range(3)]
    assert pseudonym_module._keyed.cache_info()[:2] == (2, 1), "(hits, misses): one HMAC made"
    expected = hmac.new(KEY.encode(), b"email:p0@example.com", hashlib.sha256).hexdigest()
    assert hashes[0] == expected
    assert len(set(hashes)) == 3


def test_the_kind_is_part_of_the_hash() -> None:
    """The same text as an e-mail and as a name gives unrelated hashes."""
    assert keyed_hash("email", "ada", KEY) != keyed_hash("name", "ada", KEY)


def test_pseudonyms_are_stable_readable_and_hold_no_part_of_the_value() -> None:
    email = pseudonym("email", "Ada@Example.com", KEY)
    assert email == pseudonym("email", "ada@example.com", KEY)
    assert email.startswith("p-")
    assert email.endswith("@pseudonym.example")
    assert "ada" not in email
    assert pseudonym("phone", "555 0102", KEY).startswith("tel-")
    assert pseudonym("name", "Ada Lovelace", KEY).startswith("Person ")
    assert erased_email(email_hash("ada@example.com", KEY)).endswith("@erased.example")


def _settings(**env: str) -> ServiceSettings:
    base = {"CRM_SERVICE_NAME": "pseudonym-test", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    return ServiceSettings.model_validate({**base, "MONGODB_URI": "mongodb://127.0.0.1:1", **env})


def test_the_development_key_is_the_default_locally_and_refused_in_production(tmp_path: object) -> None:
    assert _settings().pseudonym_key.get_secret_value() == DEV_PSEUDONYM_KEY
    from crm_platform.keys import ensure_dev_keys

    production = {
        "CRM_ENV": "production",
        "CRM_JWT_PUBLIC_KEYS_FILE": str(ensure_dev_keys().public),
        "CRM_REVOCATIONS_URL": "http://gateway:8080/internal/revocations",
        "CRM_KAFKA_ALLOW_PLAINTEXT": "true",
    }
    with pytest.raises(ValidationError, match="CRM_PSEUDONYM_KEY"):
        _settings(**production)
    with pytest.raises(ValidationError, match="CRM_PSEUDONYM_KEY"):
        _settings(**production, CRM_PSEUDONYM_KEY=DEV_PSEUDONYM_KEY)
    with pytest.raises(ValidationError, match="at least 16"):
        _settings(CRM_PSEUDONYM_KEY="short")
    assert _settings(**production, CRM_PSEUDONYM_KEY=KEY).pseudonym_key.get_secret_value() == KEY


def test_the_same_value_hashed_twice_in_a_row_is_hashed_once() -> None:
    """A drained handoff's e-mail is hashed as its key opens it, then for its inbox item's
    person hashes: the second time it is not hashed again; any other kind, key or value is."""
    keyed_hash("name", "someone else", KEY)
    pseudonym_module._keyed.cache_clear()
    first = email_hash("Ada@Example.com", KEY)
    assert email_hash("Ada@Example.com", KEY) == first
    assert pseudonym_module._keyed.cache_info()[:2] == (0, 1), "(hits, misses): hashed once"
    assert first == hmac.new(KEY.encode(), b"email:ada@example.com", hashlib.sha256).hexdigest()
    others = [
        keyed_hash("name", "Ada@Example.com", KEY),
        email_hash("Ada@Example.com", KEY + "x"),
        email_hash("Bob@Example.com", KEY),
        email_hash("Ada@Example.com", KEY),
    ]
    assert pseudonym_module._keyed.cache_info()[:2] == (3, 2), "each of them hashed"
    assert others[-1] == first
    assert len(set(others)) == 4
