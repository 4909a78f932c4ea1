"""What every adapter shares: the HTTP call, the stream loop, and turning failures into
:class:`~apps.gateway.providers.base.ProviderError`.

A wire-format module subclasses :class:`ProviderAdapter` and supplies four translations: our
request to its body, its JSON to a :class:`ChatResult`, its SSE events to :class:`StreamEvent`,
and its error body to a :class:`ProviderError`. Nothing else differs between providers.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from llmwise.observability import UpstreamSpan, upstream_span

from .base import (
    CODE_STREAM_INTERRUPTED,
    TYPE_UPSTREAM,
    ChatRequest,
    ChatResult,
    ProviderError,
    StreamEvent,
    invalid_response_error,
    parse_retry_after,
    transport_error,
)
from .transport import CLIENT_ERRORS, PoolLimits, SseEvent, Timeouts, http_client, sse_events

logger = logging.getLogger("apps.gateway.providers")

BAD_REQUEST = 400  # an upstream status from here on is an error
ERROR_BODY_SNIPPET_CHARS = 300  # enough of a non-JSON error body to diagnose, not to flood logs


@dataclass(frozen=True, slots=True)
class WireRequest:
    url: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]


def _log_exchange(provider: str, url: str, status: int) -> None:
    """One INFO line per upstream call (with the request id and org of the log context); the
    query string is left out, where a provider may carry a key."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s: POST %s -> %s", provider, url.split("?", 1)[0], status)


def json_dumps(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else ``{}``: providers omit and null fields freely."""
    return value if isinstance(value, dict) else {}


def as_int(value: Any) -> int:
    """A token count from JSON (missing, null or junk count as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ProviderAdapter(abc.ABC):
    """One provider endpoint: where it is, how long we wait, how its wire format translates."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self._client_timeout = self.timeouts.for_client()
        self._limits = limits

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.provider} {self.base_url}>"

    # --- what a wire format supplies ------------------------------------------------------------
    @abc.abstractmethod
    def build_request(self, request: ChatRequest, *, api_key: str, stream: bool) -> WireRequest:
        """Our request in the provider's shape; raises ProviderError for what it cannot carry."""

    @abc.abstractmethod
    def parse_result(
        self, payload: dict[str, Any], *, request: ChatRequest, headers: Mapping[str, str]
    ) -> ChatResult:
        """A non-streamed response body (already JSON-decoded) in our shape."""

    @abc.abstractmethod
    def parse_stream(
        self, events: AsyncIterator[SseEvent], *, request: ChatRequest
    ) -> AsyncIterator[StreamEvent]:
        """The provider's SSE events as ours; raises ProviderError when the stream ends without
        its terminal event or carries an error."""

    @abc.abstractmethod
    def error_from_payload(
        self, *, status: int, payload: Any, text: str, retry_after: float | None
    ) -> ProviderError:
        """An error response (``payload`` is the decoded JSON or ``None``) as ours."""

    # --- the calls ------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest, *, api_key: str) -> ChatResult:
        """One non-streamed call: the whole answer, or a ProviderError."""
        wire = self.build_request(request, api_key=api_key, stream=False)
        span = upstream_span(provider=self.provider, url=wire.url)
        try:
            status, headers, content = await self._post(wire, span)
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise
        if span is not None:
            span.end()
        if status >= BAD_REQUEST:
            raise self.error_from_response(status=status, content=content, headers=headers)
        try:
            payload = orjson.loads(content)
        except ValueError:
            raise invalid_response_error(provider=self.provider, message="not JSON") from None
        if not isinstance(payload, dict):
            raise invalid_response_error(provider=self.provider, message="not a JSON object")
        try:
            return self.parse_result(payload, request=request, headers=headers)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise invalid_response_error(
                provider=self.provider, message=f"unexpected shape ({exc!r})"
            ) from None

    @asynccontextmanager
    async def _exchange(
        self, wire: WireRequest, span: UpstreamSpan | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``wire`` upstream; the response once its head arrived (logged, on the span)."""
        async with (
            http_client(base_url=self.base_url, limits=self._limits) as client,
            client.post(
                wire.url,
                data=json_dumps(wire.body),
                headers=wire.headers if span is None else span.headers(wire.headers),
                timeout=self._client_timeout,
            ) as response,
        ):
            _log_exchange(self.provider, wire.url, response.status)
            if span is not None:
                span.status(response.status)
            yield response

    async def _post(
        self, wire: WireRequest, span: UpstreamSpan | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send ``wire`` and read the whole answer: status, headers and body."""
        try:
            async with (
                asyncio.timeout(self.timeouts.total),
                self._exchange(wire, span) as response,
            ):
                return response.status, response.headers, await response.read()
        except TimeoutError as exc:
            raise self._transport_error(exc, timed_out=True) from None
        except CLIENT_ERRORS as exc:
            raise self._transport_error(exc, timed_out=False) from None

    async def stream(self, request: ChatRequest, *, api_key: str) -> AsyncIterator[StreamEvent]:
        """One streamed call: text deltas, then one final event (see StreamEvent).

        Failures raise ProviderError; once any text was yielded the error is never retryable.
        Close the generator (``contextlib.aclosing``) when you stop early, to free the connection.
        """
        wire = self.build_request(request, api_key=api_key, stream=True)
        span = upstream_span(provider=self.provider, url=wire.url)
        try:
            async for event in self._stream(wire, request, span):
                yield event
        except BaseException as exc:
            if span is not None:  # closed early by the consumer is not an error of the call
                span.end(None if isinstance(exc, GeneratorExit) else exc)
            raise
        if span is not None:
            span.end()

    async def _stream(
        self, wire: WireRequest, request: ChatRequest, span: UpstreamSpan | None
    ) -> AsyncIterator[StreamEvent]:
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        delivered = False
        started = False
        try:
            async with self._exchange(wire, span) as response:
                if response.status >= BAD_REQUEST:
                    content = await response.read()
                    raise self.error_from_response(
                        status=response.status, content=content, headers=response.headers
                    )
                started = True
                events = sse_events(response, deadline=deadline)
                async for event in self.parse_stream(events, request=request):
                    if event.text:
                        delivered = True
                    yield event
        except ProviderError as error:
            raise (error.after_output() if delivered else error) from None
        except TimeoutError as exc:
            timed_out = self._transport_error(exc, timed_out=True)
            raise (timed_out.after_output() if delivered else timed_out) from None
        except CLIENT_ERRORS as exc:
            if not started:
                raise self._transport_error(exc, timed_out=False) from None
            interrupted = ProviderError(
                f"{self.provider} dropped the stream: {exc}",
                provider=self.provider,
                status=502,
                error_type=TYPE_UPSTREAM,
                code=CODE_STREAM_INTERRUPTED,
                retryable=not delivered,
            )
            raise interrupted from None

    # --- helpers for subclasses -----------------------------------------------------------------
    def error_from_response(
        self, *, status: int, content: bytes, headers: Mapping[str, str]
    ) -> ProviderError:
        retry_after = parse_retry_after(headers.get("retry-after"))
        text = content.decode("utf-8", errors="replace")
        try:
            payload: Any = json.loads(content)
        except ValueError:
            payload = None
        return self.error_from_payload(
            status=status,
            payload=payload,
            text=text[:ERROR_BODY_SNIPPET_CHARS],
            retry_after=retry_after,
        )

    def loads_event(self, data: str) -> dict[str, Any]:
        """One SSE data payload as a JSON object, or the 502 for upstream garbage."""
        try:
            payload = orjson.loads(data)
        except ValueError:
            raise invalid_response_error(
                provider=self.provider, message="a stream event is not JSON"
            ) from None
        if not isinstance(payload, dict):
            raise invalid_response_error(
                provider=self.provider, message="a stream event is not a JSON object"
            )
        return payload

    def truncated_error(self) -> ProviderError:
        return invalid_response_error(
            provider=self.provider, message="the stream ended before its terminal event"
        )

    def _transport_error(self, exc: BaseException, *, timed_out: bool) -> ProviderError:
        what = "timed out" if timed_out else "could not be reached"
        detail = f" ({type(exc).__name__})" if not isinstance(exc, TimeoutError) else ""
        return transport_error(
            provider=self.provider, message=f"{self.provider} {what}{detail}.", timed_out=timed_out
        )
