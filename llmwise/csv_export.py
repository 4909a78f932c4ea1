"""CSV downloads of the dashboard: streamed row by row, and safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence

from django.http import StreamingHttpResponse

# Cells starting with these are evaluated as formulas by Excel, LibreOffice and Google Sheets.
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """``text`` so that a spreadsheet shows it and never runs it (CSV/formula injection).

    Apply it to every cell whose content someone else could choose (names, notes, prompts);
    numbers we format ourselves stay numbers.
    """
    return "'" + text if text.startswith(CSV_FORMULA_PREFIXES) else text


class _Echo:
    """A file-like object for :func:`csv.writer` that hands each line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


def csv_streaming_response(
    *, rows: Iterable[Sequence[object]], filename: str
) -> StreamingHttpResponse:
    """A download written one row at a time, so a long export never sits in memory."""
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
