"""Upstream connections: pooled on the server's loop, one client per call anywhere else."""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from apps.gateway.providers.registry import adapter_for
from apps.gateway.providers.transport import (
    env_proxy,
    http_clients_aclose,
    pool_clients_on_this_loop,
)
from apps.gateway.sandbox import SandboxServer

from .conftest import TEST_TIMEOUTS, chat

pytestmark = pytest.mark.anyio

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


class Upstream:
    """OpenAI-shaped answers; remembers the client port of every request (one per connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": ANSWER})


async def _three_calls(upstream: Upstream) -> None:
    server = SandboxServer(app=upstream).start()  # type: ignore[arg-type]
    try:
        adapter = adapter_for(
            provider="openai", base_url=f"{server.base_url}/v1", timeouts=TEST_TIMEOUTS
        )
        for _ in range(3):
            assert (await adapter.complete(chat(model="m"), api_key="sk-test")).text == "hi"
    finally:
        server.stop()


async def test_the_server_loop_reuses_its_connections() -> None:
    pool_clients_on_this_loop()
    upstream = Upstream()
    try:
        await _three_calls(upstream)
    finally:
        await http_clients_aclose()
    assert len(upstream.ports) == 3
    assert len(set(upstream.ports)) == 1


async def test_elsewhere_each_call_has_its_own_client_closed_after_it() -> None:
    upstream = Upstream()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await _three_calls(upstream)
        gc.collect()
    assert len(set(upstream.ports)) == 3
    assert not [w for w in caught if "Unclosed" in str(w.message)]


@pytest.mark.parametrize(
    ("env", "url", "proxy"),
    [
        ({}, "https://api.openai.com/v1", None),
        ({"HTTPS_PROXY": "http://egress:3128"}, "https://api.openai.com/v1", "http://egress:3128"),
        (
            {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "openai.com"},
            "https://api.openai.com/v1",
            None,
        ),
        ({"HTTPS_PROXY": "http://egress:3128"}, "http://127.0.0.1:9/v1", None),
    ],
)
def test_the_proxy_comes_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxy: str | None
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(url) == proxy
