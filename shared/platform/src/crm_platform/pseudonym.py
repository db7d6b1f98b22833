"""The install's ONE keyed hash of personal data (issue 9: pseudonyms and erasure).

Every place that must recognise a person without holding their details uses this module:
the pseudonymised fields analysts and executives see, the ``email_hash`` an erasure request
carries on the log (never the e-mail itself), the ``email_hash`` a department stores beside
an e-mail to find the person again, and the pseudonym that replaces an erased person's
details.

Scheme: HMAC-SHA256 with one install-wide key (``CRM_PSEUDONYM_KEY``: a secret from the
secret manager in production, refused there when left at the development default) over the
normalised value, prefixed by its kind (``email:``, ``phone:``, ``name:``) so that the same
text as an e-mail and as a name gives two unrelated hashes. Stable across requests, services
and time (counts and joins on a person still work), not reversible without the key; rotating
the key changes every hash (stored ``email_hash`` values must then be recomputed:
docs/governance.md, "Erasure").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from typing import Literal

# The development key: fixed, so that every local service (and test) agrees on hashes.
# ServiceSettings refuses it when CRM_ENV=production.
DEV_PSEUDONYM_KEY = "crm-dev-pseudonym-key-not-a-secret"

Kind = Literal["email", "phone", "name"]

# Pseudonymous e-mails use the reserved ``.example`` domain (RFC 2606): valid for the contracts'
# EmailStr (``.invalid`` is refused as special-use), and never deliverable.

_SPACES = re.compile(r"\s+")
_NOT_DIGIT = re.compile(r"\D")
# Hex digits a display pseudonym shows (48 bits: collisions are rare at CRM scale and
# harmless, a pseudonym is a label; the full hash is what finds a person).
DISPLAY_DIGITS = 12


def normalise_email(value: str) -> str:
    """An e-mail as the CRM identifies a person: trimmed and lower-cased."""
    return value.strip().lower()


def normalise_phone(value: str) -> str:
    """A phone number's digits only (``+1 (555) 010-2030`` and ``15550102030`` are one number)."""
    return _NOT_DIGIT.sub("", value)


def normalise_name(value: str) -> str:
    """A name case-folded with single spaces."""
    return _SPACES.sub(" ", value.strip()).casefold()


_NORMALISE = {"email": normalise_email, "phone": normalise_phone, "name": normalise_name}


def keyed_hash(kind: Kind, value: str, key: str) -> str:
    """HMAC-SHA256 (hex) of the normalised ``value`` of ``kind`` under the install's ``key``."""
    asked = (kind, value, key)
    last = _last[0]
    if last[0] == asked:
        return last[1]
    mac = _keyed(key).copy()  # the key's padded inner and outer hashes, made once per key
    mac.update(f"{kind}:{_NORMALISE[kind](value)}".encode())
    digest = mac.hexdigest()
    _last[0] = (asked, digest)
    return digest


# The last value hashed and its hash: a drained handoff's e-mail is hashed twice in a row (the
# key it opens with learns it, then its inbox item's person hashes), 1.45 us each time; the
# second is this lookup (docs/performance.md, nineteenth session, drainsales). One value only,
# replaced by the next one hashed, set in one assignment (threads read a whole pair).
_last: list[tuple[tuple[str, str, str], str]] = [(("", "", ""), "")]


@functools.lru_cache(maxsize=4)
def _keyed(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 of ``key`` with nothing hashed yet: copied per value, it costs half of
    ``hmac.new`` (a bulk capture or an import hashes each lead's e-mail twice: its stored
    ``person_hashes`` and its person key's lookup; docs/performance.md, ninth session)."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


_configured: list[str] = [DEV_PSEUDONYM_KEY]


def configure(key: str) -> None:
    """Set this process's key (the runtimes call it with ``CRM_PSEUDONYM_KEY`` at start): the
    stores hash e-mails as they write them without carrying the key through every call."""
    _configured[0] = key


def current_key() -> str:
    return _configured[0]


def email_hash(email: str, key: str | None = None) -> str:
    """The keyed hash that stands for a person's e-mail (erasure requests, stored hashes);
    ``key`` defaults to the process's configured key (:func:`configure`)."""
    return keyed_hash("email", email, current_key() if key is None else key)


def pseudonym(kind: Kind, value: str, key: str) -> str:
    """A readable stand-in for a person's ``kind`` value, the same wherever it is computed."""
    digits = keyed_hash(kind, value, key)[:DISPLAY_DIGITS]
    if kind == "email":
        return f"p-{digits}@pseudonym.example"
    if kind == "phone":
        return f"tel-{digits}"
    return f"Person {digits}"


def erased_email(email_digest: str) -> str:
    """What an erased person's e-mail becomes: derived from the hash alone (no key, no e-mail needed)."""
    return f"erased-{email_digest[:DISPLAY_DIGITS]}{ERASED_DOMAIN}"


ERASED_DOMAIN = "@erased.example"


def is_erased_email(value: str) -> bool:
    """An e-mail :func:`erased_email` made (nobody's: it stands for a person who was forgotten)."""
    return value.endswith(ERASED_DOMAIN)


def erased_name(email_digest: str) -> str:
    """What an erased person's name becomes."""
    return f"Erased person {email_digest[:DISPLAY_DIGITS]}"


def is_hex_digest(value: str) -> bool:
    """A SHA-256 hex digest (64 lower-case hex digits), as :func:`email_hash` gives."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
