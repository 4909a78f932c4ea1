"""An upstream that hangs or trickles bytes: our timeouts bound every call and every stream.

The sandbox plays the slow upstream over real HTTP: ``timeout`` never answers, ``stall`` starts
the answer (head and some deltas, or half a body) and goes silent, ``trickle`` starts it and then
sends one byte every 50 ms without ever finishing a line — each byte well inside the read
timeout, so only the call's total deadline can end it. First at the adapters (every provider),
then through the live gateway, where the call must also be settled for what was streamed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from io import StringIO
from typing import Any

import aiohttp
import httpx
import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.providers.base import ProviderError
from apps.gateway.providers.transport import Timeouts, sse_events, sse_lines
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import ALL_PROVIDERS, MODELS, LiveGateway, chat

FIRST_BYTE = 0.25  # seconds of silence that end a call
TOTAL = 1.0  # seconds a whole call may take, streamed body included
SLOW = Timeouts(connect=1.0, first_byte=FIRST_BYTE, total=TOTAL)
MARGIN = 0.75  # scheduling slack on a loaded machine
KEY = "sk-test-sandbox"
PROMPT = "Tell me about the weather in Paris today"


async def _stream(provider: str, make_adapter: Any, fault: str) -> tuple[list[str], Any, float]:
    adapter = make_adapter(provider, timeouts=SLOW)
    request = chat(f"{PROMPT} [[sandbox:{fault}]]", model=MODELS[provider])
    texts: list[str] = []
    started = time.perf_counter()
    error = None
    try:
        async for event in adapter.stream(request, api_key=KEY):
            texts.append(event.text)
    except ProviderError as exc:
        error = exc
    return texts, error, time.perf_counter() - started


async def _complete(provider: str, make_adapter: Any, fault: str) -> tuple[Any, float]:
    adapter = make_adapter(provider, timeouts=SLOW)
    request = chat(f"{PROMPT} [[sandbox:{fault}]]", model=MODELS[provider])
    started = time.perf_counter()
    try:
        await adapter.complete(request, api_key=KEY)
    except ProviderError as exc:
        return exc, time.perf_counter() - started
    return None, time.perf_counter() - started


# --- the adapters -----------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.usefixtures("_close_clients")
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_a_stream_that_stalls_after_some_text_ends_after_the_read_timeout(
    provider: str, make_adapter: Any
) -> None:
    texts, error, seconds = await _stream(provider, make_adapter, "stall")
    assert any(texts), "the deltas before the stall reach the caller"
    assert error is not None
    assert (error.status, error.code, error.retryable) == (504, "upstream_timeout", False)
    assert FIRST_BYTE <= seconds < TOTAL + MARGIN


@pytest.mark.anyio
@pytest.mark.usefixtures("_close_clients")
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_a_stream_that_trickles_bytes_ends_at_the_total_deadline(
    provider: str, make_adapter: Any
) -> None:
    texts, error, seconds = await _stream(provider, make_adapter, "trickle")
    assert any(texts)
    assert error is not None
    assert (error.status, error.code, error.retryable) == (504, "upstream_timeout", False)
    # Each byte came inside the read timeout: only the total deadline could end it.
    assert TOTAL <= seconds < TOTAL + MARGIN


@pytest.mark.anyio
@pytest.mark.usefixtures("_close_clients")
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
@pytest.mark.parametrize(("fault", "low"), [("stall", FIRST_BYTE), ("trickle", TOTAL)])
async def test_a_body_that_stalls_or_trickles_ends_on_time(
    provider: str, fault: str, low: float, make_adapter: Any
) -> None:
    error, seconds = await _complete(provider, make_adapter, fault)
    assert error is not None
    assert (error.status, error.code, error.retryable) == (504, "upstream_timeout", True)
    assert low <= seconds < TOTAL + MARGIN


# --- the SSE line reader ----------------------------------------------------------------------
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
LINE_SEPARATOR_TEXT = "one\u2028two\x85three"  # what str.splitlines() would cut


async def _raw_sse(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    """An upstream sending raw UTF-8 in its JSON (as providers do), in awkward pieces: CRLF
    line ends split across writes, text holding U+2028 and U+0085, and a write ending inside
    the UTF-8 bytes of a character."""
    if scope["type"] != "http":
        return
    data = json.dumps({"text": LINE_SEPARATOR_TEXT}, ensure_ascii=False).encode()
    cut = data.index("\u2028".encode()) + 1  # between the first and second byte of U+2028
    pieces = [
        b"data: " + data[:5],
        data[5:cut],
        data[cut:] + b"\r",
        b"\n\r",
        b"\ndata: [DONE]\r\n\r\n",
    ]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for piece in pieces:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.mark.anyio
async def test_sse_lines_split_on_cr_lf_crlf_only_whatever_the_chunks() -> None:
    server = SandboxServer(app=_raw_sse).start()  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(server.base_url + "/") as response:
                events = [event.data async for event in sse_events(response)]
            async with client.get(server.base_url + "/") as response:
                lines = [line async for line in sse_lines(response)]
    finally:
        server.stop()
    assert [json.loads(events[0])["text"], events[1]] == [LINE_SEPARATOR_TEXT, "[DONE]"]
    assert lines[1:] == ["", "data: [DONE]", ""]


# --- through the gateway ----------------------------------------------------------------------
FUNDS = 1_000_000
MODEL = "gpt-4o-mini"


@pytest.fixture
def slow_gateway(settings: Any, sandbox: SandboxServer, personas: Personas) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.PROVIDER_TIMEOUTS = {"connect": 1.0, "first_byte": FIRST_BYTE, "total": TOTAL}
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="timeout tests")
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("fault", ["stall", "trickle"])
def test_a_slow_upstream_stream_is_cut_settled_and_told(
    live_gateway: LiveGateway, slow_gateway: str, personas: Personas, fault: str
) -> None:
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        live_gateway.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": f"tell me more [[sandbox:{fault}]]"}],
        },
        headers={"Authorization": f"Bearer {slow_gateway}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    seconds = time.perf_counter() - started
    assert seconds < TOTAL + 2 * MARGIN
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events)
    assert events[-1]["error"]["code"] == "upstream_timeout"
    log = RequestLog.objects.get(request_id=request_id)
    assert (log.status, log.http_status, log.usage_estimated) == ("error", 504, True)
    assert log.cost_micros > 0  # billed for the text that did go out, no more
    assert Reservation.objects.get(request_id=request_id).status == Reservation.Status.SETTLED
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - log.cost_micros, 0)
    _audit_ok()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("fault", ["timeout", "stall", "trickle"])
def test_a_slow_upstream_call_is_a_504_and_costs_nothing(
    live_gateway: LiveGateway, slow_gateway: str, personas: Personas, fault: str
) -> None:
    started = time.perf_counter()
    response = httpx.post(
        live_gateway.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"tell me more [[sandbox:{fault}]]"}],
        },
        headers={"Authorization": f"Bearer {slow_gateway}"},
        timeout=30,
    )
    assert time.perf_counter() - started < TOTAL + 2 * MARGIN
    assert response.status_code == 504
    body = response.json()
    assert body["error"]["code"] == "upstream_timeout"
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    _audit_ok()
