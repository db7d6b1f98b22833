"""Email addresses in contracts and APIs: pydantic's ``EmailStr``, validated once per address.

Validating an address (``email_validator``: syntax, IDNA, normalisation) is the dearest
step of accepting a lead: a capture validates the address at the API and again when its
``lead.captured`` is built, and an import does that for every row. The result depends on
the address alone, so it is remembered for the most recent addresses; an invalid address
raises every time (exceptions are not cached). The JSON Schema is ``EmailStr``'s
(``{"type": "string", "format": "email"}``), so the contracts' schemas do not change.
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from email_validator.rfc_constants import (
    DNS_LABEL_LENGTH_LIMIT,
    DOMAIN_MAX_LENGTH,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)
from pydantic import EmailStr as _PydanticEmailStr
from pydantic.networks import validate_email

#: Addresses remembered (about 200 bytes each): a few import batches' worth.
CACHED_ADDRESSES = 16384


# A plain ASCII address that ``email_validator`` accepts as it is (it normalises nothing in it):
# dot-atom local part, lower-case LDH labels, an alphabetic TLD. Anything else takes the full path.
_PLAIN = re.compile(
    r"(?P<local>[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*)@(?P<domain>(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63})"
)


# The stand-in address a sealed event carries (``crm_contracts.events.common.sealed_email``):
# plain, so ``email_validator`` returns it unchanged (a test holds it), and one per person, so a
# consumer of sealed events (analytics folds every ``lead.captured``) never finds it among the
# remembered addresses: it paid :func:`_plain` and the cache's miss for each, 2.3 us against
# 0.2 for this match (docs/performance.md, "Sixteenth session, bulk").
_SEALED_STAND_IN = re.compile(r"sealed-[0-9a-f]{12}@sealed\.example")


# ``email_validator``'s special-use domains as they were last seen (the list may be changed by
# an application: then these are made again), as a set and the suffixes of their subdomains.
_special_use: list[str] = []
_special_names: frozenset[str] = frozenset()
_special_suffixes: tuple[str, ...] = ()


def _special_use_domain(domain: str) -> bool:
    """Whether ``domain`` is a special-use domain or under one: one set look-up and one
    ``endswith`` of a tuple, not a string built and compared per special-use name (1.1 us of
    every address opened in a drained handoff; docs/performance.md, twenty-second session)."""
    global _special_use, _special_names, _special_suffixes
    if _special_use != SPECIAL_USE_DOMAIN_NAMES:
        _special_use = list(SPECIAL_USE_DOMAIN_NAMES)
        _special_names = frozenset(_special_use)
        _special_suffixes = tuple("." + d for d in _special_use)
    return domain in _special_names or domain.endswith(_special_suffixes)


def _plain(value: str) -> bool:
    """Whether ``value`` is an address ``email_validator`` accepts and returns unchanged, known
    without it: the lengths it checks, no ``--`` (IDNA's ``xn--``), no special-use domain."""
    m = _PLAIN.fullmatch(value)
    if m is None or len(value) > EMAIL_MAX_LENGTH:
        return False
    local, domain = m.group("local", "domain")
    if len(local) > LOCAL_PART_MAX_LENGTH or len(domain) > DOMAIN_MAX_LENGTH or "--" in domain:
        return False
    if any(len(label) > DNS_LABEL_LENGTH_LIMIT for label in domain.split(".")):
        return False
    return not _special_use_domain(domain)


@lru_cache(maxsize=CACHED_ADDRESSES)
def normalized_email(value: str) -> str:
    """The address as ``EmailStr`` normalises it; ``PydanticCustomError`` when it is not one.

    A plain address (:func:`_plain`; most of them) is its own normalised form: an import's
    every row would otherwise pay ``email_validator``'s full syntax and IDNA pass (a tenth of
    leads' CPU per imported row, docs/performance.md "Sixth session"). A test holds the
    shortcut to ``email_validator``'s answers on generated and tricky addresses.
    """
    if _plain(value):
        return value
    return validate_email(value)[1]


class EmailStr(_PydanticEmailStr):
    """``pydantic.EmailStr`` with :func:`normalized_email` as its validation."""

    @classmethod
    def _validate(cls, input_value: str, /) -> str:
        if _SEALED_STAND_IN.fullmatch(input_value) is not None:
            return input_value  # a sealed event's stand-in: its own normalised form, not remembered
        return normalized_email(input_value)
