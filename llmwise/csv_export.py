"""CSV downloads of the dashboard: streamed row by row (alone or zipped), and safe to open in a
spreadsheet."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import cast

from asgiref.sync import sync_to_async
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


def _next_or_none(parts: Iterator[bytes]) -> bytes | None:
    return next(parts, None)


class StreamingDownload(StreamingHttpResponse):
    """A :class:`StreamingHttpResponse` that also streams a *synchronous* iterator under ASGI.

    Django serves a sync iterator to an ASGI server by ``list()``-ing it first, in one thread
    hop, which would hold a whole export in memory. Here each chunk is pulled with its own
    ``sync_to_async`` call (thread-sensitive: the same thread, so the same database connection
    and server-side cursor as the view). Chunks should be tens of KiB: one hop costs tens of µs.
    """

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.is_async:
            async for part in super().__aiter__():
                yield part
            return
        parts = cast(Iterator[bytes], self.streaming_content)
        pull = sync_to_async(_next_or_none, thread_sensitive=True)
        while (chunk := await pull(parts)) is not None:
            yield chunk


CHUNK_BYTES = 64 * 1024


def _csv_chunks(rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """CSV lines joined into pieces of about ``CHUNK_BYTES`` characters."""
    writer = csv.writer(_Echo())
    pending: list[str] = []
    size = 0
    for row in rows:
        line = writer.writerow(row)
        pending.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield "".join(pending)


def csv_streaming_response(*, rows: Iterable[Sequence[object]], filename: str) -> StreamingDownload:
    """A download written while it is sent, so a long export never sits in memory."""
    response = StreamingDownload(_csv_chunks(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class _Sink:
    """A write-only file for :class:`zipfile.ZipFile`: keeps what was written until drained.

    It has no ``seek``/``tell``, so the archive is written as a stream (sizes in data
    descriptors after each member), which every unzip tool reads.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def csv_zip_stream(
    files: Iterable[tuple[str, Iterable[Sequence[object]]]],
    *,
    extra: Iterable[tuple[str, bytes]] = (),
) -> Iterator[bytes]:
    """A ZIP archive of CSV files (``(name, rows)``, written a chunk of rows at a time) plus
    small ``extra`` files, yielded in pieces as the compressor produces them: memory stays flat
    however many rows there are. Members are ZIP64, so no size limit applies."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in extra:
            archive.writestr(name, data)
        for name, rows in files:
            with archive.open(name, mode="w", force_zip64=True) as member:
                for text in _csv_chunks(rows):
                    member.write(text.encode())
                    chunk = sink.drain()
                    if chunk:
                        yield chunk
            chunk = sink.drain()
            if chunk:
                yield chunk
    yield sink.drain()
