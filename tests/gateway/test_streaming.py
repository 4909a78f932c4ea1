"""Streaming chat over real HTTP: SSE in OpenAI's vocabulary, settled however the stream ends."""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any

import httpx
import openai
import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway.models import CatalogModel
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

MODEL = "gpt-4o-mini"
FUNDS = 1_000_000


@pytest.fixture
def secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="stream tests")
    return account_services.api_key_create(
        org=personas.org, name="stream", created_by=personas.owner
    ).secret


def _wallet(personas: Personas) -> Wallet:
    return Wallet.objects.get(organization=personas.org)


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _events(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_sdk_stream_with_usage_is_billed_to_the_reported_usage(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    sdk = openai.OpenAI(api_key=secret, base_url=live_gateway.url + "/v1", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Stream me a short answer."}],
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens > 0
    expected = cost_micros(
        model=CatalogModel.objects.get(pk=MODEL),
        usage=Usage(usage.prompt_tokens, usage.completion_tokens),
    )
    log = wait_for_log(chunks[0].id.removeprefix("chatcmpl-"))
    assert (log.status, log.stream, log.usage_estimated) == ("ok", True, False)
    assert log.ttft_ms is not None
    assert log.ttft_ms <= log.latency_ms
    assert log.cost_micros == expected
    assert log.completion == text
    assert _wallet(personas).balance_micros == FUNDS - expected
    _audit_ok()


def test_error_before_any_text_is_a_plain_json_error(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = httpx.post(
        live_gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "hi [[sandbox:http_503]]"}],
        },
        timeout=10,
    )
    assert response.status_code == 503
    assert response.json()["error"]["provider"] == "openai"
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    assert _wallet(personas).balance_micros == FUNDS
    _audit_ok()


def test_midstream_failure_ends_with_an_error_event_and_bills_what_was_streamed(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    with httpx.stream(
        "POST",
        live_gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": MODEL,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 60,
            "messages": [{"role": "user", "content": "tell a story [[sandbox:midstream_drop]]"}],
        },
        timeout=10,
    ) as response:
        assert response.status_code == 200
        events = _events(response)
    assert "[DONE]" not in events
    assert "error" in events[-1]
    streamed = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e.get("choices")
    )
    assert streamed
    log = wait_for_log(response.headers["x-request-id"])
    assert (log.status, log.usage_estimated) == ("error", True)
    assert log.cost_micros > 0
    assert _wallet(personas).balance_micros == FUNDS - log.cost_micros
    _audit_ok()


def _long_stream(live_gateway: LiveGateway, secret: str) -> Any:
    """A streamed call asking for a long answer (400 tokens), as a context manager."""
    return httpx.stream(
        "POST",
        live_gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": MODEL,
            "stream": True,
            "max_tokens": 400,
            "messages": [{"role": "user", "content": "a long answer please"}],
        },
        timeout=10,
    )


def test_client_disconnect_mid_stream_settles_on_what_was_sent(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="openai", fault="none", chunk_delay_ms=100)
    with _long_stream(live_gateway, secret) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any("content" in line for line in received)
    # The connection is closed here, long before the upstream would have finished.
    log = wait_for_log(request_id)
    assert log.http_status == 499
    assert log.usage_estimated
    assert 0 < log.completion_tokens < 400
    reservation = Reservation.objects.get(request_id=request_id)
    assert reservation.status == Reservation.Status.SETTLED
    wallet = _wallet(personas)
    assert wallet.reserved_micros == 0
    assert wallet.balance_micros == FUNDS - log.cost_micros
    _audit_ok()


def test_a_stream_counts_once_for_its_providers_health_even_when_the_client_leaves_at_once(
    secret: str, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    """A stream's success is recorded once its first token is out (not before: the first byte
    waits for nothing it does not need), also when the client leaves right at that token."""
    import asyncio

    from apps.gateway.routing import health

    def calls() -> tuple[int, int]:
        [row] = asyncio.run(health.health_snapshot([("openai", MODEL)]))
        return row.calls, row.errors

    before = calls()
    faults.set(provider="openai", fault="none", chunk_delay_ms=300)
    with _long_stream(live_gateway, secret) as response:
        request_id = response.headers["x-request-id"]
        assert any("content" in line for line in response.iter_lines())  # the first token
    wait_for_log(request_id)
    deadline = time.monotonic() + 5  # successes reach the shared store in batches
    while calls() != (before[0] + 1, before[1]):
        assert time.monotonic() < deadline, (before, calls())
        time.sleep(0.1)
