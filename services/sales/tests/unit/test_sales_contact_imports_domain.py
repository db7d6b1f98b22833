"""A contact import batch by ``POST /contacts``' rule (sales.domain.contact_imports), without I/O."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from crm_platform.imports.domain import ImportFormat
from sales.domain.contact import Contact
from sales.domain.contact_imports import ContactImportDefaults, ContactImportJob, ContactRow, import_rows

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
JOB = ContactImportJob("job-1", ImportFormat.CSV, None, ContactImportDefaults("rita"), "u-mo", "mo", NOW, NOW)


def test_one_contact_per_email_new_ones_with_an_event_known_ones_filled() -> None:
    known, _ = Contact.add(
        "c-known", email="ada@x.example", name="Ada", owner="rob", source="referral", by="rob", now=NOW
    )
    ids = (f"c{n}" for n in itertools.count())
    rows = [
        ContactRow("Bo@X.example", "Bo"),
        ContactRow("ada@x.example ", "Someone Else", phone="+1 2"),
        ContactRow("bo@x.example", "Bo Again", role="buyer"),
    ]
    batch = import_rows({"ada@x.example": known}, rows, JOB, lambda: next(ids), NOW)
    [bo] = batch.new
    assert (bo.email, bo.name, bo.role, bo.owner, bo.source, bo.import_id) == (
        "bo@x.example", "Bo", "buyer", "rita", "import", "job-1",
    )  # fmt: skip
    assert [e.contact_id for e in batch.events] == [bo.id], "one event per new contact"
    [ada] = batch.changed
    assert (ada.name, ada.phone, ada.owner) == ("Ada", "+1 2", "rob"), "filled fields kept, empty ones filled"
    assert batch.merged == 2


def test_a_known_contact_nothing_new_to_fill_is_not_written() -> None:
    known, _ = Contact.add(
        "c1", email="a@x.example", name="A", owner="rob", source="import", by="rob", now=NOW
    )
    batch = import_rows({"a@x.example": known}, [ContactRow("a@x.example", "A")], JOB, lambda: "new", NOW)
    assert (batch.new, batch.changed, batch.merged) == ((), (), 1)
