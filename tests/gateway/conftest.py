"""Gateway fixtures: one sandbox upstream per test session (per xdist worker), real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from apps.gateway.models import RequestLog
from apps.gateway.providers.adapter import ProviderAdapter
from apps.gateway.providers.base import ChatMessage, ChatRequest
from apps.gateway.providers.registry import adapter_for
from apps.gateway.providers.transport import Timeouts, http_clients_aclose
from apps.gateway.sandbox import SandboxServer
from tests.servers import ThreadServer, close_shared_thread_connections

# Small enough to keep the suite fast, large enough never to trip on a loaded CI machine.
TEST_TIMEOUTS = Timeouts(connect=2.0, first_byte=3.0, total=10.0)
SHORT_TIMEOUTS = Timeouts(connect=1.0, first_byte=0.1, total=5.0)
SANDBOX_KEY = "sk-test-sandbox"

# The real path of each provider's base URL, which the sandbox mirrors under /<provider>.
REAL_PATHS = {
    "openai": "/v1",
    "anthropic": "",
    "gemini": "",
    "openrouter": "/api/v1",
    "mistral": "/v1",
    "groq": "/openai/v1",
    "deepseek": "/v1",
    "xai": "/v1",
    "together": "/v1",
}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5-20251001",
    "gemini": "gemini-2.0-flash",
    "openrouter": "meta-llama/llama-3.3-70b-instruct",
    "mistral": "mistral-small-latest",
    "groq": "llama-3.3-70b-versatile",
    "deepseek": "deepseek-chat",
    "xai": "grok-3",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
}
ALL_PROVIDERS = tuple(REAL_PATHS)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer().start()
    yield server
    server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def _close_clients() -> AsyncIterator[None]:
    """Pooled clients belong to the test's event loop: close them before it goes."""
    yield
    await http_clients_aclose()


def sandbox_base_url(sandbox: SandboxServer, provider: str) -> str:
    return f"{sandbox.base_url}/{provider}{REAL_PATHS[provider]}"


@pytest.fixture
def make_adapter(sandbox: SandboxServer) -> Any:
    def make(provider: str, *, timeouts: Timeouts = TEST_TIMEOUTS) -> ProviderAdapter:
        return adapter_for(
            provider=provider, base_url=sandbox_base_url(sandbox, provider), timeouts=timeouts
        )

    return make


def chat(
    text: str = "Tell me about the weather in Paris today",
    *,
    model: str,
    system: str | None = None,
    max_tokens: int | None = 200,
    **changes: Any,
) -> ChatRequest:
    messages = [ChatMessage("user", text)]
    if system is not None:
        messages.insert(0, ChatMessage("system", system))
    return ChatRequest(
        upstream_model=model, messages=tuple(messages), max_tokens=max_tokens, **changes
    )


@dataclass
class FaultControl:
    """Drives POST/DELETE /_control/faults; clears everything at teardown."""

    base_url: str

    def set(self, **rule: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.base_url}/_control/faults", json=rule)
        response.raise_for_status()
        return dict(response.json())

    def clear(self, **query: str) -> int:
        response = httpx.delete(f"{self.base_url}/_control/faults", params=query)
        response.raise_for_status()
        return int(response.json()["cleared"])

    def list(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base_url}/_control/faults").json()["faults"])


@pytest.fixture
def faults(sandbox: SandboxServer) -> Iterator[FaultControl]:
    control = FaultControl(sandbox.base_url)
    control.clear()
    yield control
    control.clear()


@dataclass
class LiveGateway:
    url: str


class _Served:
    """The app with the production server's lifespan set-up of its loop (``serving_start``:
    pooled upstream clients, the hot path's async database pool), without the embedded
    services the full lifespan would also start.

    ``booked_first``: a response's last body message is passed on only when the app is done
    with the request. A chat call is billed and logged just after its answer has gone out
    (``llmwise.http.after_answer``); this lets a test read the database as soon as its
    response is complete. ``live_gateway_as_deployed`` serves without it, as production does
    (``tests/gateway/test_after_answer.py``)."""

    def __init__(self, app: Any, *, booked_first: bool = True) -> None:
        self.app = app
        self.booked_first = booked_first

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from llmwise.http import serving_start, serving_stop

        if scope["type"] == "http" and self.booked_first:
            last: list[Any] = []

            async def send_but_last(message: Any) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    last.append(message)
                else:
                    await send(message)

            try:
                await self.app(scope, receive, send_but_last)
            finally:
                for message in last:
                    await send(message)
            return
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await serving_start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await serving_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(scope="session")
def live_gateway() -> Iterator[LiveGateway]:
    """Our whole ASGI app served by uvicorn on a loopback port, in this process (so tests using
    ``transactional_db`` share its database). Clients talk to it over real HTTP. A response
    ends once its call is booked (see :class:`_Served`)."""
    yield from _serve(booked_first=True)


@pytest.fixture(scope="module")
def live_gateway_as_deployed() -> Iterator[LiveGateway]:
    """:func:`live_gateway` with responses sent exactly as the production server sends them:
    a chat call's answer ends before its settle and log row are written. Module-scoped: its
    database connections are given back once its few tests are done (PostgreSQL's 100 are
    shared by both test workers, and the wallet's concurrency tests need 40 at once)."""
    yield from _serve(booked_first=False)


def _serve(*, booked_first: bool) -> Iterator[LiveGateway]:
    from llmwise.http import get_asgi_application

    app = _Served(get_asgi_application(), booked_first=booked_first)
    server = ThreadServer(app, name="live-gateway", lifespan="on").start()
    yield LiveGateway(url=server.url)
    server.stop()
    close_shared_thread_connections()


def wait_for_log(request_id: str, timeout: float = 10) -> RequestLog:
    """The request-log row of a call the live server is still finishing (a stream settles after
    its last byte, or when its client left). SQLite's in-memory test database answers "table
    is locked" to a read while the server thread writes: that is a reason to look again."""
    from django.db import OperationalError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            log = RequestLog.objects.filter(request_id=request_id).first()
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            log = None
        if log is not None:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no request log for {request_id}")
