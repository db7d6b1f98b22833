"""crm_platform.retention's pure parts: which records a rule selects, what anonymising writes,
and configuration naming a record type no rule knows (refused at startup). The rounds on the
real mongod are tested where a service wires them (services/sales/tests/test_sales_retention.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from crm_platform.retention import ANONYMISED_AT, Action, Rule, periods, retention_job

NOW = datetime(2026, 12, 5, tzinfo=UTC)
SCRUB = {"name": "[anonymised]", "email": lambda i: f"anonymised-{i}@anonymised.example"}
CONTACT = Rule(
    "contact", "contacts", "updated_at", Action.ANONYMISE, eligible={"status": "closed"}, scrub=SCRUB
)
ACTIVITY = Rule("activity", "activities", "logged_at", Action.DELETE)


def test_a_rule_selects_eligible_records_older_than_the_cutoff_and_not_yet_anonymised() -> None:
    assert CONTACT.expired(NOW) == {"status": "closed", "updated_at": {"$lt": NOW}, ANONYMISED_AT: None}
    assert ACTIVITY.expired(NOW) == {"logged_at": {"$lt": NOW}}


def test_anonymising_overwrites_personal_fields_with_unique_values_and_marks_the_record() -> None:
    assert CONTACT.scrubbed("c1", NOW) == {
        "name": "[anonymised]", "email": "anonymised-c1@anonymised.example", ANONYMISED_AT: NOW,
    }  # fmt: skip


def test_configuration_names_only_known_record_types() -> None:
    assert periods([CONTACT, ACTIVITY], {"contact": 30}) == {"contact": timedelta(days=30)}
    with pytest.raises(ValueError, match="unknown record types"):
        periods([CONTACT], {"contacts": 30})
    with pytest.raises(ValueError, match="unknown record types"):
        retention_job(None, [CONTACT], {"lead": 1}, 60)  # type: ignore[arg-type]
