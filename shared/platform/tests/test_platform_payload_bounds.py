"""Which payload models bound what they validate, and where a non-finite number can sit in them."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from crm_contracts import ALL_EVENTS
from crm_contracts.envelope import Timestamp
from crm_contracts.events.common import ScoreReason
from crm_contracts.events.leads import LeadCapturedV2, LeadQualifiedV2
from crm_contracts.events.platform import HandoffReceivedV1
from crm_platform.payload_bounds import depth_of, finite_check
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

INF, NAN = float("inf"), float("nan")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_every_contract_payload_is_bounded_and_shallow() -> None:
    for model in ALL_EVENTS:
        depth = depth_of(model)
        assert depth is not None, model
        assert 1 <= depth <= 5, (model, depth)
        assert finite_check(model, 31) is not None


def test_the_depth_counts_the_payload_and_every_nested_object_or_array() -> None:
    class Leaf(_Closed):
        x: int

    class Mid(_Closed):
        leaves: list[Leaf]  # the list, then each leaf

    class Top(_Closed):
        mid: Mid | None = None
        tags: dict[str, list[int]] = Field(default_factory=dict)

    assert depth_of(Leaf) == 1
    assert depth_of(Mid) == 3
    assert depth_of(Top) == 4
    assert finite_check(Top, 4) is not None
    assert finite_check(Top, 3) is None, "deeper than allowed: walked"


def test_float_places_are_checked_wherever_they_nest() -> None:
    check = finite_check(LeadQualifiedV2, 31)
    assert check is not None
    reasons: list[dict[str, Any]] = [{"behaviour": "page_view", "count": 1, "points": 2.5}]
    assert check({"score": 1.0, "threshold": 2, "score_reasons": reasons})
    assert not check({"score": INF, "threshold": 2.0, "score_reasons": reasons})
    assert not check({"score": 1.0, "threshold": NAN, "score_reasons": reasons})
    assert not check(
        {"score": 1.0, "threshold": 2.0, "score_reasons": [*reasons, {**reasons[0], "points": -INF}]}
    )
    assert check({"score": "inf", "score_reasons": []}), "a string is no number to the walk"
    receipt = finite_check(HandoffReceivedV1, 31)
    assert receipt is not None
    assert not receipt({"transport_latency_seconds": INF})
    assert receipt({"transport_latency_seconds": 0.25})
    custom = finite_check(LeadCapturedV2, 31)  # the extension map: a dict of models with a union
    assert custom is not None
    assert not custom({"custom": {"k": {"type": "number", "value": INF}}})
    assert custom({"custom": {"k": {"type": "money", "value": {"amount": "1.00", "currency": "EUR"}}}})
    assert finite_check(ScoreReason, 31) is not None


def _unbounded_models() -> list[type[BaseModel]]:
    class AnyValue(_Closed):
        value: Any

    class OpenMap(_Closed):
        values: dict[str, object]

    class Extra(BaseModel):
        model_config = ConfigDict(extra="allow")
        x: int

    class Before(_Closed):
        x: Annotated[int, BeforeValidator(lambda v: v)]

    class After(_Closed):
        x: Annotated[float, AfterValidator(lambda v: 0.0)]

    class Aliased(_Closed):
        x: float = Field(alias="y")

    class Recursive(_Closed):
        child: Recursive | None = None

    class Nested(_Closed):
        inner: AnyValue

    return [AnyValue, OpenMap, Extra, Before, After, Aliased, Recursive, Nested]


@pytest.mark.parametrize("model", _unbounded_models(), ids=lambda m: m.__name__)
def test_a_model_that_may_let_any_shape_or_number_through_is_walked(model: type[BaseModel]) -> None:
    assert depth_of(model) is None
    assert finite_check(model, 31) is None


def test_the_timestamps_check_before_validation_is_the_one_let_through() -> None:
    class Stamped(_Closed):
        at: Timestamp
        maybe: Timestamp | None = None

    assert depth_of(Stamped) == 1
