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


async def sse_events(
    response: httpx.Response, *, deadline: float | None = None
) -> AsyncIterator[SseEvent]:
    """Server-sent events from a streamed response, per the SSE spec's line rules.

    Comment lines (``: OPENROUTER PROCESSING`` keep-alives) are skipped, never surfaced as data.
    An event still pending when the body ends is yielded too: whether the stream was complete is
    for the adapter to judge from the events, not for the reader. Past ``deadline`` (loop time)
    it raises TimeoutError: a call's total budget includes its streamed body.
    """
    loop = asyncio.get_running_loop()
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError
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
