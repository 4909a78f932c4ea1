"""The sandbox upstream: one plain ASGI app speaking every provider's wire format.

Paths are ``/<provider>`` + the provider's real path, so an adapter pointed at
``<sandbox>/<provider><real base path>`` cannot tell the difference (providers.md §8)::

    /openai/v1/chat/completions             /anthropic/v1/messages
    /openrouter/api/v1/chat/completions     /gemini/v1beta/models/{model}:generateContent
    /groq/openai/v1/chat/completions        /gemini/v1beta/models/{model}:streamGenerateContent
    /mistral|deepseek|xai|together/v1/chat/completions          (and each family's models list)

Control API (JSON): ``GET /_control/faults`` lists rules, ``POST /_control/faults`` sets one
(``{"provider", "model"?, "fault", "count"?, "latency_ms"?, "chunk_delay_ms"?,
"retry_after"?}``), ``DELETE /_control/faults[?provider=&model=]`` clears. ``GET /_control/health``.
No Django in here: it must run beside the gateway, in a thread, or on its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .faults import (
    ANY_PROVIDER,
    CHUNK_DELAY_HEADER,
    FAULT_HEADER,
    HTTP_ERROR_FAULTS,
    LATENCY_HEADER,
    MIDSTREAM_FAULTS,
    SLOW_FAULTS,
    Fault,
    FaultBook,
    FaultRule,
    fault_from_prompt,
)
from .text import chunks, compose
from .wire import DEFAULT_RETRY_AFTER_SECONDS, BadRequest, Call, Reply, Wire, json_reply
from .wire_anthropic import AnthropicWire
from .wire_gemini import GeminiWire
from .wire_openai import FLAVORS, OpenAIWire

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONTROL_PREFIX = "/_control"
HANG_MAX_SECONDS = 60.0  # a "timeout" fault waits this long for the client to give up
MS = 1000
# A "trickle" sends one byte this often (or every chunk_delay_ms when set): far inside any read
# timeout, so only a deadline on the whole call ends it.
TRICKLE_INTERVAL_MS = 50


class DropConnection(Exception):
    """Raised inside a streamed response to make the server cut the connection mid-body."""


def _wires() -> dict[str, Wire]:
    wires: dict[str, Wire] = {name: OpenAIWire(name) for name in FLAVORS}
    wires["anthropic"] = AnthropicWire()
    wires["gemini"] = GeminiWire()
    return wires


class SandboxApp:
    """ASGI callable. ``latency_ms`` delays every answer's first byte, ``chunk_delay_ms`` every
    stream chunk after it; both are overridable per rule and per request."""

    def __init__(self, *, latency_ms: int = 0, chunk_delay_ms: int = 0) -> None:
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.faults = FaultBook()
        self.wires = _wires()
        # Chat calls received, so tests can prove that a refused request never went upstream.
        self.chat_calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        body = await _read_body(receive)
        if path.startswith(CONTROL_PREFIX):
            await _send_reply(send, self._control(scope, path, body))
            return
        provider, _, rest = path.lstrip("/").partition("/")
        wire = self.wires.get(provider)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = None
        call = Call(provider, scope["method"], "/" + rest, headers, query, decoded)
        route = wire.route(call) if wire is not None else None
        if wire is None or route is None:
            await _send_reply(send, json_reply(404, {"error": f"no sandbox route for {path}"}))
            return
        if route == "models":
            await _send_reply(send, wire.auth_error(call) or wire.models(call=call))
            return
        self.chat_calls += 1
        await self._chat(wire, call, receive, send, raw_body=body)

    async def _chat(
        self, wire: Wire, call: Call, receive: Receive, send: Send, *, raw_body: bytes
    ) -> None:
        refusal = wire.auth_error(call)
        if refusal is not None:
            await _send_reply(send, refusal)
            return
        if call.body is None and raw_body:
            await _send_reply(send, wire.bad_request("The request body is not valid JSON."))
            return
        try:
            prompt = wire.parse(call)
        except BadRequest as exc:
            await _send_reply(send, wire.bad_request(str(exc)))
            return
        if prompt.model.startswith("unknown"):
            await _send_reply(send, wire.not_found(f"The model `{prompt.model}` does not exist."))
            return

        rule = self.faults.take(provider=call.provider, model=prompt.model)
        fault = _header_fault(call) or fault_from_prompt([text for _, text in prompt.texts])
        if fault is None:
            fault = rule.fault if rule is not None else Fault.NONE
        latency = _header_ms(call, LATENCY_HEADER)
        if latency is None:
            latency = rule.latency_ms if rule and rule.latency_ms is not None else self.latency_ms
        chunk_delay = _header_ms(call, CHUNK_DELAY_HEADER)
        if chunk_delay is None:
            chunk_delay = (
                rule.chunk_delay_ms
                if rule and rule.chunk_delay_ms is not None
                else self.chunk_delay_ms
            )
        retry_after = (
            rule.retry_after
            if rule and rule.retry_after is not None
            else DEFAULT_RETRY_AFTER_SECONDS
        )

        if latency:
            await asyncio.sleep(latency / MS)
        if fault == Fault.TIMEOUT:
            await _wait_for_disconnect(receive)
            return
        if fault in HTTP_ERROR_FAULTS:
            await _send_reply(
                send, wire.fault_reply(fault, call=call, prompt=prompt, retry_after=retry_after)
            )
            return

        answer = compose(prompt=prompt)
        finish = "length" if answer.truncated else "stop"
        if fault == Fault.CONTENT_FILTER:
            finish = "content_filter"
        if not prompt.stream:
            if fault in MIDSTREAM_FAULTS:  # a 200 whose body is cut or not JSON
                await _send_reply(send, Reply(200, b'{"id": "broken", "choices": [{"index": 0'))
                return
            reply = wire.completion(call=call, prompt=prompt, answer=answer, finish=finish)
            if fault in SLOW_FAULTS:
                await _send_slowly(send, receive, reply, fault=fault, interval_ms=chunk_delay)
                return
            await _send_reply(send, reply)
            return

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def emit(data: bytes, *, delay: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if delay and chunk_delay:
                await asyncio.sleep(chunk_delay / MS)

        for data in wire.stream_head(call=call, prompt=prompt, answer=answer):
            await emit(data, delay=False)
        pieces = chunks(answer.text)
        cut = (
            max(1, len(pieces) // 2)
            if fault in MIDSTREAM_FAULTS or fault in SLOW_FAULTS
            else len(pieces)
        )
        for piece in pieces[:cut]:
            await emit(wire.stream_delta(call=call, prompt=prompt, answer=answer, text=piece))
        if fault == Fault.STALL:
            await _wait_for_disconnect(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if fault == Fault.TRICKLE:
            # An SSE comment that never ends, a byte at a time: each byte resets a read timeout.
            await _trickle(send, receive, b":" + b" keep-alive" * 10_000, chunk_delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if fault == Fault.MIDSTREAM_DROP:
            raise DropConnection
        if fault == Fault.MIDSTREAM_ERROR:
            await emit(wire.stream_error(call=call), delay=False)
        elif fault == Fault.INVALID_JSON:
            await emit(b"data: {not json at all\n\n", delay=False)
        elif fault != Fault.TRUNCATED_SSE:
            tail = wire.stream_tail(
                call=call,
                prompt=prompt,
                answer=answer,
                finish=finish,
                with_usage=fault != Fault.NO_USAGE,
            )
            for data in tail:
                await emit(data, delay=False)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- control API ----------------------------------------------------------------------------
    def _control(self, scope: Scope, path: str, body: bytes) -> Reply:
        method = scope["method"]
        if path == f"{CONTROL_PREFIX}/health":
            return json_reply(200, {"status": "ok"})
        if path != f"{CONTROL_PREFIX}/faults":
            return json_reply(404, {"error": "unknown control path"})
        if method == "GET":
            return json_reply(200, {"faults": self.faults.describe()})
        if method == "DELETE":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            cleared = self.faults.clear(provider=query.get("provider"), model=query.get("model"))
            return json_reply(200, {"cleared": cleared})
        if method != "POST":
            return json_reply(405, {"error": "use GET, POST or DELETE"})
        try:
            spec = json.loads(body)
            provider = spec["provider"]
            if provider != ANY_PROVIDER and provider not in self.wires:
                raise ValueError(f"unknown provider {provider!r}")
            fault = Fault(spec.get("fault", Fault.NONE.value))
            rule = FaultRule(
                fault=fault,
                remaining=_optional_int(spec, "count"),
                latency_ms=_optional_int(spec, "latency_ms"),
                chunk_delay_ms=_optional_int(spec, "chunk_delay_ms"),
                retry_after=_optional_int(spec, "retry_after"),
            )
            model = spec.get("model")
            if model is not None and not isinstance(model, str):
                raise TypeError("model must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            return json_reply(400, {"error": f"bad fault rule: {exc}"})
        self.faults.set(provider=provider, model=model, rule=rule)
        return json_reply(200, {"faults": self.faults.describe()})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _optional_int(spec: dict[str, Any], name: str) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _header_fault(call: Call) -> Fault | None:
    value = call.headers.get(FAULT_HEADER)
    if not value:
        return None
    try:
        return Fault(value.strip())
    except ValueError:
        return None


def _header_ms(call: Call, name: str) -> int | None:
    value = call.headers.get(name)
    return int(value) if value and value.strip().isdigit() else None


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _wait_for_disconnect(receive: Receive) -> None:
    """Hang like a stuck upstream until the client gives up (or a generous cap passes)."""
    try:
        async with asyncio.timeout(HANG_MAX_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass


async def _trickle(send: Send, receive: Receive, data: bytes, interval_ms: int) -> None:
    """Send ``data`` one byte every ``interval_ms`` (default :data:`TRICKLE_INTERVAL_MS`) until
    the client goes away, the data runs out, or :data:`HANG_MAX_SECONDS` pass."""
    interval = (interval_ms or TRICKLE_INTERVAL_MS) / MS
    gone = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        async with asyncio.timeout(HANG_MAX_SECONDS):
            for index in range(len(data)):
                if gone.done():
                    return
                chunk = data[index : index + 1]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(interval)
    except TimeoutError:
        pass
    finally:
        gone.cancel()


async def _send_slowly(
    send: Send, receive: Receive, reply: Reply, *, fault: Fault, interval_ms: int
) -> None:
    """A non-streamed answer whose body stalls half-way (``stall``) or crawls (``trickle``)."""
    headers = [(b"content-type", reply.content_type.encode())]
    headers += [(k.encode(), v.encode()) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if fault == Fault.TRICKLE:
        await _trickle(send, receive, reply.body, interval_ms)
    else:
        half = reply.body[: len(reply.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        await _wait_for_disconnect(receive)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [(b"content-type", reply.content_type.encode())]
    headers += [(k.encode(), v.encode()) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


__all__ = ["DropConnection", "SandboxApp"]
