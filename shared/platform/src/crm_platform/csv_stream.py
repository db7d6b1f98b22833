"""Streamed CSV answers: a list exported row by row from a database cursor, never whole.

Every department exports its lists the same way (``GET /<records>/export``): the route
applies the list route's role rules and filters, hands an async iterator of rows (one
``Sequence`` of cell values per record) to :func:`csv_response`, and the rows are encoded
and sent in pieces of about ``flush_bytes`` as the cursor yields them. Memory stays
bounded by one piece whatever the list's size.

Users who see pseudonyms (analysts and executives, :mod:`crm_platform.field_rules`) get the
same export with the person's columns (``email``, ``phone``, a person's ``name``, ...)
pseudonymised and free-text columns withheld, row by row as they stream: :class:`CsvResponse`
decides when it is sent, from the request's principal, so no export route does it itself.

Cells are made safe for spreadsheets: a text cell starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return is prefixed with ``'`` (OWASP's advice against CSV
formula injection), so an imported ``=HYPERLINK(...)`` name never runs as a formula in
the exporting user's spreadsheet. Numbers are written as they are, ``None`` as an empty
cell, times in ISO 8601, booleans as ``true``/``false``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from crm_platform import field_rules

Cell = str | int | float | bool | Decimal | datetime | None
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
MEDIA_TYPE = "text/csv; charset=utf-8"


def cell_text(value: Cell) -> str:
    """One cell as exported text (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float | Decimal):
        return str(value)
    return "'" + value if value.startswith(FORMULA_START) else value


async def csv_chunks(
    header: Sequence[str], rows: AsyncIterator[Sequence[Cell]], *, flush_bytes: int = 64 * 1024
) -> AsyncIterator[bytes]:
    """The CSV text of ``header`` and ``rows`` (RFC 4180, CRLF), in UTF-8 pieces of about ``flush_bytes``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    async for row in rows:
        writer.writerow([cell_text(v) for v in row])
        if buffer.tell() >= flush_bytes:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


class CsvResponse(StreamingResponse):
    """A streamed CSV whose person columns are pseudonymised for the users who see pseudonyms."""

    def __init__(
        self, header: Sequence[str], rows: AsyncIterator[Sequence[Cell]], headers: dict[str, str]
    ) -> None:
        self.header, self.rows = tuple(header), rows
        super().__init__(csv_chunks(self.header, rows), media_type=MEDIA_TYPE, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = field_rules.for_scope(scope)
        transform = None
        if found is not None:
            transform = field_rules.row_transform(self.header, found, await field_rules.custom_shown(scope))
        if transform is not None:
            rows: AsyncIterator[Any] = field_rules.transformed_rows(self.rows, transform)
            self.body_iterator = csv_chunks(self.header, rows)
        await super().__call__(scope, receive, send)


def csv_response(filename: str, header: Sequence[str], rows: AsyncIterator[Sequence[Cell]]) -> CsvResponse:
    """A streamed ``text/csv`` download named ``filename`` (``Content-Disposition: attachment``)."""
    safe = "".join(c for c in filename if c.isalnum() or c in "._-") or "export.csv"
    return CsvResponse(
        header, rows, {"Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "no-store"}
    )
