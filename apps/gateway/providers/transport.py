"""HTTP plumbing shared by every adapter: pooled clients, timeouts, an SSE reader.

One ``httpx.AsyncClient`` per provider base URL, created lazily. Clients are kept per event loop
because a connection pool belongs to the loop that opened its sockets: the server has one loop,
but tests and ``async_to_sync`` callers make many, and a pool reused across loops breaks.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

DEFAULT_CONNECT_SECONDS = 5.0
DEFAULT_FIRST_BYTE_SECONDS = 60.0
DEFAULT_TOTAL_SECONDS = 600.0
DEFAULT_MAX_CONNECTIONS = 1000  # per provider: one worker must hold 1,000 open streams
DEFAULT_MAX_KEEPALIVE = 100


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long one upstream call may take.

    ``first_byte`` bounds every wait for the provider: for the response head, and between two
    chunks of a stream (a stalled stream is as dead as a silent server). ``total`` bounds the
    whole call including the streamed body.
    """

    connect: float = DEFAULT_CONNECT_SECONDS
    first_byte: float = DEFAULT_FIRST_BYTE_SECONDS
    total: float = DEFAULT_TOTAL_SECONDS

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect, read=self.first_byte, write=self.first_byte, pool=self.connect
        )


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_keepalive: int = DEFAULT_MAX_KEEPALIVE


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def http_client(*, base_url: str, limits: PoolLimits | None = None) -> httpx.AsyncClient:
    """The pooled client for ``base_url`` on the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    client = per_loop.get(base_url)
    if client is None or client.is_closed:
        limits = limits or PoolLimits()
        client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive,
            ),
            timeout=Timeouts().for_httpx(),
            follow_redirects=False,
        )
        per_loop[base_url] = client
    return client


async def http_clients_aclose() -> None:
    """Close this loop's pooled clients (ASGI lifespan shutdown, test teardown)."""
    loop = asyncio.get_running_loop()
    clients = _clients.pop(loop, {})
    for client in clients.values():
        await client.aclose()


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "" when the stream does not name its events (OpenAI, Gemini)
    data: str


async def sse_lines(
    response: httpx.Response, *, deadline: float | None = None
) -> AsyncIterator[str]:
    """The body's lines, split as the SSE spec says: on CR, LF or CRLF only.

    (httpx's ``aiter_lines`` splits like ``str.splitlines``, so a JSON string holding a raw
    U+2028 or U+0085, which providers send as UTF-8, would be cut in two.) Past ``deadline``
    (loop time) it raises TimeoutError, however the upstream paces its bytes: every wait for the
    next chunk is bounded by it, so a body trickled a byte at a time inside the read timeout, or
    keep-alives sent forever, ends on time.
    """
    chunks = response.aiter_text()
    pending = ""  # the start of a line not ended yet
    cr_pending = False  # the last chunk ended in CR: a CRLF may be split across two chunks
    while True:
        try:
            if deadline is None:
                text = await anext(chunks)
            else:
                # Only the wait is under the timeout, never the consumer's work between two
                # lines (this generator is suspended then, outside the scope).
                async with asyncio.timeout_at(deadline):
                    text = await anext(chunks)
        except StopAsyncIteration:
            break
        if cr_pending:
            text = "\r" + text
        cr_pending = text.endswith("\r")
        if cr_pending:
            text = text[:-1]
        text = pending + text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        # The last piece is not ended yet (when the chunk ended in CR, it is, but that CR is put
        # back in front of the next chunk: a LF there makes it one CRLF, not an empty line).
        pending = lines.pop()
        for line in lines:
            yield line
    if pending or cr_pending:  # the body ended inside a line, or right after its CR
        yield pending


async def sse_events(
    response: httpx.Response, *, deadline: float | None = None
) -> AsyncIterator[SseEvent]:
    """Server-sent events from a streamed response, per the SSE spec's line rules.

    Comment lines (``: OPENROUTER PROCESSING`` keep-alives) are skipped, never surfaced as data.
    An event still pending when the body ends is yielded too: whether the stream was complete is
    for the adapter to judge from the events, not for the reader. Past ``deadline`` (loop time)
    it raises TimeoutError: a call's total budget includes its streamed body, however slowly the
    upstream trickles it (see :func:`sse_lines`).
    """
    event = ""
    data: list[str] = []
    async for line in sse_lines(response, deadline=deadline):
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = "", []
            continue
        if line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SseEvent(event, "\n".join(data))
