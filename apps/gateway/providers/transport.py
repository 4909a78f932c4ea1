"""HTTP plumbing shared by every adapter: pooled clients, timeouts, an SSE reader.

One ``aiohttp.ClientSession`` per provider base URL, created lazily. It was httpx until the
gateway benchmark showed httpx costing ~1 ms of CPU per upstream call, a quarter of the whole
request (aiohttp: ~0.15 ms; see bench/README.md). A connection pool belongs to the loop that
opened its sockets, so clients are pooled only on the server's loop (:func:`http_client`).

Sessions keep no cookies (an upstream's cookie must never reach another organization's call) and,
like most HTTP clients, honour the standard proxy variables (:func:`env_proxy`).
"""

from __future__ import annotations

import asyncio
import codecs
import urllib.request
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

DEFAULT_CONNECT_SECONDS = 5.0
DEFAULT_FIRST_BYTE_SECONDS = 60.0
DEFAULT_TOTAL_SECONDS = 600.0
DEFAULT_MAX_CONNECTIONS = 1000  # per provider: one worker must hold 1,000 open streams
IDLE_CONNECTION_SECONDS = 30.0  # an idle pooled connection is closed after this long

# Everything the client raises for "no usable HTTP answer" besides timeouts (TimeoutError).
CLIENT_ERRORS = (aiohttp.ClientError,)


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

    def for_client(self) -> aiohttp.ClientTimeout:
        # ``connect`` covers waiting for a pooled connection as well as opening one; the
        # total is enforced by the caller (asyncio.timeout), which also bounds a trickled body.
        return aiohttp.ClientTimeout(
            total=None,
            connect=self.connect,
            sock_connect=self.connect,
            sock_read=self.first_byte,
        )


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary()
)
_pooling_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def pool_clients_on_this_loop() -> None:
    """Keep pooled connections on the running loop: the server's, which lives as long as its
    pools (ASGI lifespan start-up calls this; shutdown calls :func:`http_clients_aclose`)."""
    _pooling_loops.add(asyncio.get_running_loop())


def env_proxy(base_url: str) -> str | None:
    """The proxy the standard variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) name for
    ``base_url``, or None. Read once per client: aiohttp's ``trust_env`` would look at the
    environment (and ``~/.netrc``, in a thread) on every call."""
    parts = urlsplit(base_url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _new_session(base_url: str, limits: PoolLimits) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=0,
            keepalive_timeout=IDLE_CONNECTION_SECONDS,
        ),
        timeout=Timeouts().for_client(),
        cookie_jar=aiohttp.DummyCookieJar(),
        proxy=env_proxy(base_url),
    )


@asynccontextmanager
async def http_client(
    *, base_url: str, limits: PoolLimits | None = None
) -> AsyncIterator[aiohttp.ClientSession]:
    """A client for one call to ``base_url``.

    On the server's loop (see :func:`pool_clients_on_this_loop`) it is the loop's pooled client
    for that URL, whose connections are reused from call to call. Anywhere else (a management
    command, a Celery task, sync code through ``async_to_sync``, a test) the loop may be gone
    after this call, and a pool cannot outlive its loop: the call gets a client of its own,
    closed when the call ends.
    """
    limits = limits or PoolLimits()
    loop = asyncio.get_running_loop()
    if loop not in _pooling_loops:
        async with _new_session(base_url, limits) as session:
            yield session
        return
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    client = per_loop.get(base_url)
    if client is None or client.closed:
        client = per_loop[base_url] = _new_session(base_url, limits)
    yield client


async def http_clients_aclose() -> None:
    """Close this loop's pooled clients (ASGI lifespan shutdown, test teardown)."""
    loop = asyncio.get_running_loop()
    clients = _clients.pop(loop, {})
    for client in clients.values():
        await client.close()


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "" when the stream does not name its events (OpenAI, Gemini)
    data: str


async def _body_text(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body as text, chunk by chunk as it arrives (UTF-8; a character split between two
    chunks is decoded whole, bytes that are not UTF-8 become U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in response.content.iter_any():
        text = decoder.decode(chunk)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


async def sse_lines(
    response: aiohttp.ClientResponse, *, deadline: float | None = None
) -> AsyncIterator[str]:
    """The body's lines, split as the SSE spec says: on CR, LF or CRLF only.

    (``str.splitlines`` would also split on U+2028 or U+0085, which providers send raw inside
    JSON strings.) Past ``deadline`` (loop time) it raises TimeoutError, however the upstream
    paces its bytes: every wait for the next chunk is bounded by it, so a body trickled a byte at
    a time inside the read timeout, or keep-alives sent forever, ends on time.
    """
    chunks = _body_text(response)
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
    response: aiohttp.ClientResponse, *, deadline: float | None = None
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
