"""Money, one representation everywhere: an exact ``Decimal`` of the currency's major unit.

* **API** (every request model of every service): :data:`Amount`, a finite
  decimal number (JSON number or decimal string) with at most two decimal
  places, from 0 to :data:`MAX_AMOUNT`. ``1e309``, ``Infinity``, ``NaN``,
  negative amounts and sub-cent digits are a 422 naming the field. Responses
  carry amounts as JSON numbers (exact: at most 14 significant digits).
* **Domain**: ``decimal.Decimal``; sums and ``amount x probability`` are exact,
  rounded half-even to the cent only where a figure is shown
  (:func:`round_cents`).
* **Storage**: MongoDB ``Decimal128`` (exact in aggregations too): the
  platform's client encodes ``Decimal`` as ``Decimal128`` and decodes it back
  (:data:`DECIMAL_CODEC`). Documents written before this change hold doubles;
  :func:`to_amount` reads either.
* **Events v1** (``deal.won`` ``value.amount``, ``products[].unit_price``,
  ``opportunity.*`` ``amount``, ``upsell.spotted`` ``estimated_value``) keep their
  wire type, a JSON number: :func:`to_wire` writes ``float(amount)``, which is
  exact for every amount the API accepts (at most 15 significant digits round
  trip through a double), and the receiver reads it back with
  :func:`to_amount`, giving the same cents.

A currency travels beside the amount (ISO 4217 code, ``EUR`` by default);
amounts in different currencies are never converted or summed as one.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any

from bson.codec_options import TypeCodec, TypeRegistry
from bson.decimal128 import Decimal128
from pydantic import Field, PlainSerializer

MAX_AMOUNT = Decimal("999999999999.99")
CENT = Decimal("0.01")


def _to_json(value: Decimal) -> float:
    return float(value)


_AS_NUMBER = PlainSerializer(_to_json, return_type=float, when_used="json")

Amount = Annotated[
    Decimal,
    Field(ge=0, le=MAX_AMOUNT, decimal_places=2, allow_inf_nan=False, examples=[12500.5]),
    _AS_NUMBER,
]
"""An amount a client sends: finite, 0 to MAX_AMOUNT, at most two decimal places."""

StoredAmount = Annotated[Decimal, _AS_NUMBER]
"""An amount the service already holds (domain entities, responses): shown as a JSON number."""


def to_amount(value: Any) -> Decimal:
    """An exact amount from a stored or wire value (Decimal, Decimal128, int, float or str).

    A double is read through its shortest repr, so ``0.1`` gives ``Decimal('0.1')``.
    Refuses non-finite and negative values (``ValueError``).
    """
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"amount must be finite, got {value!r}")
        value = repr(value)
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"amount must be finite and not negative, got {value!r}")
    return amount


def round_cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def to_wire(value: Decimal | None) -> float | None:
    """The v1 events' JSON number for an amount (exact within MAX_AMOUNT)."""
    return None if value is None else float(value)


def plain_numbers(value: Any) -> Any:
    """Decimals inside free-form structures (custom fields) as JSON numbers, recursively."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    return value


class DecimalCodec(TypeCodec):
    python_type = Decimal
    bson_type = Decimal128

    def transform_python(self, value: Decimal) -> Decimal128:
        return Decimal128(value)

    def transform_bson(self, value: Decimal128) -> Decimal:
        return value.to_decimal()


DECIMAL_CODEC = DecimalCodec()
TYPE_REGISTRY = TypeRegistry([DECIMAL_CODEC])
