"""An import row's capture: the plain rows' direct check gives what ``CaptureIn`` gives.

``importer.plain_capture`` accepts a row's values without the request model when each is one
the model keeps unchanged; anything else goes through ``CaptureIn`` (which words the error
report's reason). These tests hold the two paths to the same captures, and the import's
plain rows to the direct path.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from leads import importer
from leads.api.models import CaptureIn
from leads.domain.imports import ImportDefaults, ImportFormat, ImportJob, ImportState
from leads.domain.leads import Capture
from pydantic import ValidationError

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
MAPPING = {
    "Email": "email",
    "Name": "name",
    "Company": "company",
    "Channel": "source_channel",
    "Opt-in": "marketing_email",
}

EMAILS = [
    "ann@example.com",
    "Ann.Lee+x@Example.com",  # a capital domain: not plain, email_validator lower-cases it
    "ann@EXAMPLE.COM",
    "a@b.co",
    "ann@sub.example.org",
    "ann@xn--bcher-kva.example",  # IDNA: not plain
    "ann@example.test",  # special-use domain: refused
    "ann@localhost",
    "not-an-email",
    "ann@@example.com",
    "ann@exa_mple.com",
    "jösé@example.com",  # internationalised local part: not plain, valid
    "a" * 65 + "@example.com",  # local part too long
    "ann@" + "b" * 64 + ".com",  # label too long
    "ann..lee@example.com",
    ".ann@example.com",
]
TEXTS: list[str | None] = [None, "Ann", "Ann Lee", "José Müller", "x" * 200, "x" * 201, "\u00a0"]
CHANNELS = [
    "import",
    "Webinar",
    "partner_api",
    "web-form.v2",
    "-bad",
    "bad channel",
    "x" * 64,
    "y" * 65,
    "ÄÖ",
    "",
]


def _job(mapping: dict[str, str] | None = MAPPING, fmt: ImportFormat = ImportFormat.CSV) -> ImportJob:
    return ImportJob(
        id="job-1",
        format=fmt,
        mapping=mapping,
        defaults=ImportDefaults(),
        created_by="user-mia",
        created_by_name="mia",
        created_at=NOW,
        updated_at=NOW,
        state=ImportState.RUNNING,
        header=tuple(MAPPING),
    )


def _by_model(body: dict[str, Any]) -> Capture | None:
    try:
        return CaptureIn.model_validate(body).to_capture()
    except ValidationError:
        return None


def _bodies() -> list[dict[str, Any]]:
    bodies = []
    for email, name, company, channel in itertools.product(EMAILS, TEXTS, TEXTS[:3] + TEXTS[4:6], CHANNELS):
        body: dict[str, Any] = {"source_channel": channel, "campaign": None, "email": email, "name": name}
        body["company"] = company
        bodies.append(
            {k: v for k, v in body.items() if v is not None} | {"consent": {"marketing_email": True}}
        )
    return bodies


def test_a_plain_capture_is_the_one_the_request_model_gives() -> None:
    plain = 0
    for body in _bodies():
        direct = importer.plain_capture(body, True)
        if direct is not None:
            plain += 1
            assert direct == _by_model(body), body
    assert plain > 100  # the direct path is taken for most of these


def test_rows_give_the_same_captures_and_reasons_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job()
    rows = [
        {"Email": e, "Name": n or "", "Company": c or "", "Channel": ch, "Opt-in": o}
        for e, n, c, ch, o in itertools.product(EMAILS, TEXTS, TEXTS[:2], CHANNELS[:6], ["yes", "0", "maybe"])
    ]
    fast = [importer.row_capture(r, MAPPING, job) for r in rows]
    monkeypatch.setattr(importer, "plain_capture", lambda body, consent: None)
    slow = [importer.row_capture(r, MAPPING, job) for r in rows]
    assert fast == slow


def test_a_plain_row_is_not_validated_by_the_request_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("CaptureIn used for a plain row")

    row = {
        "Email": " Ann@example.com ",
        "Name": " Ann Lee ",
        "Company": "Acme",
        "Channel": "Webinar",
        "Opt-in": "yes",
    }
    with monkeypatch.context() as m:
        m.setattr(CaptureIn, "model_validate", refuse)
        capture, problem = importer.row_capture(row, MAPPING, _job())
    assert problem is None
    assert capture == Capture("Ann@example.com", "Ann Lee", "webinar", True, "Acme", None)
    # Not plain (an unknown column value the model must word): the model decides and explains.
    capture, problem = importer.row_capture({**row, "Name": ""}, MAPPING, _job())
    assert capture is None
    assert problem is not None
    assert problem.startswith("name:")
