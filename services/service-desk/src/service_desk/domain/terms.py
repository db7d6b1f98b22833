"""Contract terms: when a customer's contract starts, how long it runs, when it renews, its value.

Pure value objects (frozen dataclasses); the calendar arithmetic (``add_months``) is the contracts' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from crm_contracts.events.common import Money
from crm_contracts.events.sales import ContractTerm, add_months
from crm_platform.money import StoredAmount, to_amount, to_wire


@dataclass(frozen=True, kw_only=True)
class Term:
    """A contract term as the desk stores it (exact money: ``Decimal``, Decimal128 in MongoDB)."""

    start: datetime
    months: int
    renewal_date: datetime
    amount: StoredAmount
    currency: str
    source: str = "deal"  # "deal": from the won deal; "default": the deal carried none; "renewal"

    def __post_init__(self) -> None:
        if self.renewal_date <= self.start:
            raise ValueError("renewal_date must be after start")

    @classmethod
    def of(cls, *, start: datetime, months: int, amount: Decimal, currency: str, source: str) -> Term:
        """A term whose renewal date is ``months`` calendar months after ``start``."""
        return cls(
            start=start,
            months=months,
            renewal_date=add_months(start, months),
            amount=amount,
            currency=currency,
            source=source,
        )

    @classmethod
    def from_contract(cls, term: ContractTerm, *, source: str) -> Term:
        return cls(
            start=term.start,
            months=term.months,
            renewal_date=term.renewal_date,
            amount=to_amount(term.value.amount),
            currency=term.value.currency,
            source=source,
        )

    def to_contract(self) -> ContractTerm:
        return ContractTerm(
            start=self.start,
            months=self.months,
            renewal_date=self.renewal_date,
            value=Money(amount=to_wire(self.amount) or 0.0, currency=self.currency),
        )
