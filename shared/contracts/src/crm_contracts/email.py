"""Email addresses in contracts and APIs: pydantic's ``EmailStr``, validated once per address.

Validating an address (``email_validator``: syntax, IDNA, normalisation) is the dearest
step of accepting a lead: a capture validates the address at the API and again when its
``lead.captured`` is built, and an import does that for every row. The result depends on
the address alone, so it is remembered for the most recent addresses; an invalid address
raises every time (exceptions are not cached). The JSON Schema is ``EmailStr``'s
(``{"type": "string", "format": "email"}``), so the contracts' schemas do not change.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import EmailStr as _PydanticEmailStr
from pydantic.networks import validate_email

#: Addresses remembered (about 200 bytes each): a few import batches' worth.
CACHED_ADDRESSES = 16384


@lru_cache(maxsize=CACHED_ADDRESSES)
def normalized_email(value: str) -> str:
    """The address as ``EmailStr`` normalises it; ``PydanticCustomError`` when it is not one."""
    return validate_email(value)[1]


class EmailStr(_PydanticEmailStr):
    """``pydantic.EmailStr`` with :func:`normalized_email` as its validation."""

    @classmethod
    def _validate(cls, input_value: str, /) -> str:
        return normalized_email(input_value)
