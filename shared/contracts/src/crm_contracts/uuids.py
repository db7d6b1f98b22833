"""Random (version 4) and time-ordered (version 7) UUIDs, their randomness drawn from the OS a
block at a time.

``uuid.uuid4()`` asks the OS for 16 bytes per id (a ``getrandom`` call) and builds the UUID in
Python: 4-9 us an id on the build machine, and a bulk capture or an import batch makes two ids
per lead (the lead's, its event's). Here one ``os.urandom`` call draws the bytes of
``BLOCK`` ids; each id is then those 16 bytes with the version (4) and variant (RFC 4122)
bits set, exactly what ``uuid.uuid4()`` makes of its own 16 random bytes. Ids are not secrets
(identifiers, never keys or tokens); a forked child drops the parent's unused block, so two
processes never hand out the same id.

A version-7 UUID (RFC 9562, :func:`uuid7_str`) starts with the Unix time in milliseconds
(48 bits, then the version; 74 random bits follow): ids made later sort after ids made
earlier, as strings too (fixed-width lower-case hex). A B-tree index on such ids (a
collection's ``_id``, an index ending in ``_id``) takes each new entry at its edge; on
random ids every insert lands on a random page, and once an index outgrows what the
database keeps dirty in memory each insert makes it write a whole page back (mongod's
eviction: docs/performance.md, "Tenth session, import").

Every event's id is a version-7 UUID (:func:`uuid7`, ``crm_contracts.envelope.new_event_id``):
a consumer's ledger, and whatever it keys by a consumed event's id (sales' inbox item, the audit
entries naming it), takes new keys at its B-tree's edge (docs/performance.md, "Twenty-third
session, eventids"). Order is to the millisecond only: ids of the same millisecond follow in
random order (none of RFC 9562's optional counters, section 6.2: nothing orders by an event id;
consumers read a partition in offset order and outboxes publish in ``_id`` order). A clock
stepped back makes ids that sort before earlier ones: their keys land inside the index, and
they stay unique. Unique across processes as a version-4 id is: 74 random bits per
millisecond (two processes making a million ids in the same millisecond collide with a
chance of about 10^-11), the pool dropped by a forked child.
"""

from __future__ import annotations

import os
import time
import uuid

BLOCK = 256  # ids per draw from the OS
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant's two bits
_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, variant RFC 4122 (binary 10)

_BELOW_VERSION = (1 << 76) - 1  # the 76 bits after the time and the version (the variant's in them)
_V7 = 0x7000 << 64  # version 7 in place of the pool's version 4
_RANDOM_V7 = _CLEAR & _BELOW_VERSION  # what a version-7 id keeps of 128 random bits (74 of them)
_SET_V7 = _V7 | (0x8000 << 48)  # version 7, variant RFC 4122

_pool: list[int] = []
_pool7: list[int] = []  # a version-7 id's bits below its time: 74 random bits, version and variant set
_pop7 = _pool7.pop


def _refill() -> None:
    raw = os.urandom(16 * BLOCK)
    from_bytes = int.from_bytes
    _pool.extend((from_bytes(raw[i : i + 16], "big") & _CLEAR) | _SET for i in range(0, 16 * BLOCK, 16))


def _refill7() -> None:
    raw = os.urandom(16 * BLOCK)
    from_bytes = int.from_bytes
    _pool7.extend(
        (from_bytes(raw[i : i + 16], "big") & _RANDOM_V7) | _SET_V7 for i in range(0, 16 * BLOCK, 16)
    )


def _random7() -> int:
    """A version-7 id's bits below its time, from the pool."""
    while True:
        try:
            return _pop7()
        except IndexError:  # empty (another thread may refill at the same moment: harmless)
            _refill7()


def uuid4_int() -> int:
    """A random version-4 UUID as its 128-bit integer."""
    while True:
        try:
            return _pool.pop()
        except IndexError:  # empty (another thread may refill at the same moment: harmless)
            _refill()


_UUID = uuid.UUID
_new_uuid = uuid.UUID.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown
# UUID's two slots set through their descriptors: object.__setattr__ without its look-up by name
_set_int = uuid.UUID.__dict__["int"].__set__
_set_is_safe = uuid.UUID.__dict__["is_safe"].__set__
_time_ns = time.time_ns


def uuid4() -> uuid.UUID:
    """What ``uuid.uuid4()`` returns, from the pool: the object ``uuid.UUID(int=...)`` makes (its
    two attributes set as its ``__init__`` sets them), without that ``__init__``'s checks of
    arguments an integer from the pool never needs (0.9 -> 0.55 us; every emitted event's id)."""
    value = _new_uuid(uuid.UUID)
    _set(value, "int", uuid4_int())
    _set(value, "is_safe", _UNKNOWN)
    return value


def uuid7() -> uuid.UUID:
    """A version-7 UUID made now (:func:`uuid7_int`), the object ``uuid.UUID(int=...)`` makes
    (as :func:`uuid4` makes it): every emitted event's id. No dearer than :func:`uuid4`
    (0.5 us on the build machine): the time costs 0.1 us, the pool is popped in line and the
    UUID's two slots are set through their descriptors."""
    value = _new_uuid(_UUID)
    try:
        random_part = _pop7()
    except IndexError:
        random_part = _random7()
    _set_int(value, _time_ns() // 1_000_000 << 80 | random_part)  # 48 bits of ms until the year 10889
    _set_is_safe(value, _UNKNOWN)
    return value


# The text of the UUIDs most recently made text by :func:`text`, by the object's id; each entry
# holds its UUID, so no other object can take that id while the entry is here.
TEXTS_KEPT = 4096
_texts: dict[int, tuple[uuid.UUID, str]] = {}


def text(value: uuid.UUID) -> str:
    """``str(value)``, made once per UUID object while it is among the last :data:`TEXTS_KEPT`
    asked for (a UUID cannot change). A consumed event's id is written as text by its ledger
    entry, its changes' audit actor, its receipt, the causation of each event it causes and the
    inbox item it makes: ``str(UUID)`` (0.5-0.7 us) for each, where this is a dict look-up
    (docs/performance.md, twenty-second session, drainsales)."""
    hit = _texts.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    made = str(value)
    if len(_texts) >= TEXTS_KEPT:
        _texts.clear()
    _texts[id(value)] = (value, made)
    return made


def uuid4_str() -> str:
    """``str(uuid.uuid4())`` (the canonical 8-4-4-4-12 form, lower-case), from the pool."""
    h = f"{uuid4_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_int(millis: int | None = None) -> int:
    """A version-7 UUID as its 128-bit integer: ``millis`` (the Unix time in milliseconds, now
    by default) in its top 48 bits, the version, then 74 random bits from the pool."""
    if millis is None:
        millis = _time_ns() // 1_000_000
    return ((millis & 0xFFFF_FFFF_FFFF) << 80) | _random7()


def uuid7_str(millis: int | None = None) -> str:
    """A version-7 UUID in the canonical 8-4-4-4-12 form (lower-case): time-ordered."""
    h = f"{uuid7_int(millis):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _drop_pools() -> None:
    _pool.clear()
    _pool7.clear()


os.register_at_fork(after_in_child=_drop_pools)
