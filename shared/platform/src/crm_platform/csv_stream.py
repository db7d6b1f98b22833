"""Streamed CSV answers: a list exported row by row from a database cursor, never whole.

Every department exports its lists the same way (``GET /<records>/export``): the route
applies the list route's role rules and filters, hands an async iterator of rows (one
``Sequence`` of cell values per record) to :func:`csv_response`, and the rows are encoded
and sent in pieces of about ``flush_bytes`` as the cursor yields them. Memory stays
bounded by one piece whatever the list's size.

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

from starlette.responses import StreamingResponse

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


def csv_response(
    filename: str, header: Sequence[str], rows: AsyncIterator[Sequence[Cell]]
) -> StreamingResponse:
    """A streamed ``text/csv`` download named ``filename`` (``Content-Disposition: attachment``)."""
    safe = "".join(c for c in filename if c.isalnum() or c in "._-") or "export.csv"
    return StreamingResponse(
        csv_chunks(header, rows),
        media_type=MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "no-store"},
    )
