"""POST /v1/messages: the official ``anthropic`` SDK, unchanged, pointed at LLMWise.

SDK tests run against the live ASGI server (real HTTP, real SSE); the bad-input table goes through
Django's test client. Every provider call goes over real HTTP to the sandbox upstream — including
OpenAI models, since this endpoint reaches any catalog model whatever its provider.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import anthropic
import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/v1/messages"
CLAUDE = "claude-haiku-4.5"
GPT = "gpt-4o-mini"
FUNDS = 1_000_000


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


def _key(personas: Personas, org: Any = None) -> str:
    org = org or personas.org
    owner = personas.owner if org == personas.org else personas.outsider
    return account_services.api_key_create(org=org, name="k", created_by=owner).secret


def _fund(org: Any, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="test funds")
    wallet.refresh_from_db()
    return wallet


def _balance(org: Any) -> int:
    return Wallet.objects.get(organization=org).balance_micros


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _body(content: str = "What is the capital of France?", **fields: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
        **fields,
    }


# --- the SDK ---------------------------------------------------------------------------------
@pytest.fixture
def sdk(personas: Personas, live_gateway: LiveGateway) -> anthropic.Anthropic:
    _fund(personas.org)
    return anthropic.Anthropic(api_key=_key(personas), base_url=live_gateway.url, max_retries=0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", [CLAUDE, GPT])
def test_sdk_message_is_answered_and_billed(
    sdk: anthropic.Anthropic, personas: Personas, model: str
) -> None:
    message = sdk.messages.create(
        model=model,
        max_tokens=60,
        system=[{"type": "text", "text": "Answer briefly."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Name a primary colour."}]}
        ],
        stop_sequences=["\n\n"],
        # This SDK release no longer types temperature; older ones and raw clients still send it.
        extra_body={"temperature": 0.5, "top_p": 0.9},
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == model
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0

    log = RequestLog.objects.get(request_id=message.id.removeprefix("msg_"))
    assert (log.endpoint, log.model, log.status) == ("anthropic.messages", model, "ok")
    assert log.prompt == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a primary colour."},
    ]
    expected = cost_micros(
        model=CatalogModel.objects.get(pk=model),
        usage=Usage(message.usage.input_tokens, message.usage.output_tokens),
    )
    assert log.cost_micros == expected > 0
    assert _balance(personas.org) == FUNDS - expected
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_sdk_stream_speaks_anthropic_events_and_bills_the_usage(
    sdk: anthropic.Anthropic, personas: Personas
) -> None:
    with sdk.messages.stream(
        model=CLAUDE,
        max_tokens=60,
        system="Be brief.",
        messages=[{"role": "user", "content": "Stream me a short answer."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    log = wait_for_log(final.id.removeprefix("msg_"))
    assert log.completion == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        log.prompt_tokens,
        log.completion_tokens,
    )
    assert log.cost_micros > 0
    assert _balance(personas.org) == FUNDS - log.cost_micros
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_raw_stream_event_order(sdk: anthropic.Anthropic) -> None:
    events = list(
        sdk.messages.create(
            model=GPT,
            max_tokens=40,
            messages=[{"role": "user", "content": "Say something."}],
            stream=True,
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0


@pytest.mark.django_db(transaction=True)
def test_sdk_raises_its_typed_exceptions(sdk: anthropic.Anthropic, personas: Personas) -> None:
    def call(content: str = "hi", model: str = CLAUDE, client: Any = sdk) -> Any:
        return client.messages.create(
            model=model, max_tokens=20, messages=[{"role": "user", "content": content}]
        )

    with pytest.raises(anthropic.NotFoundError) as not_found:
        call(model="no-such-model")
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        call("[[sandbox:http_429]]")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        call("[[sandbox:overloaded_529]]")
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(
            model=CLAUDE,
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "x", "input_schema": {"type": "object"}}],
        )
    bad_key = anthropic.Anthropic(api_key="lw-wrong", base_url=str(sdk.base_url), max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        call(client=bad_key)
    assert unauthenticated.value.body["type"] == "error"  # type: ignore[index]
    # Nothing of the above was charged; the failed upstream calls released their holds.
    assert _balance(personas.org) == FUNDS
    assert not Reservation.objects.exclude(status=Reservation.Status.RELEASED).exists()
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_sdk_stream_midstream_drop_raises_and_bills_what_was_streamed(
    sdk: anthropic.Anthropic, personas: Personas
) -> None:
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        sdk.messages.stream(
            model=CLAUDE,
            max_tokens=60,
            messages=[{"role": "user", "content": "tell a story [[sandbox:midstream_drop]]"}],
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert "".join(received)
    body = failed.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["provider"] == "anthropic"  # type: ignore[index]
    log = wait_for_log(body["request_id"])  # type: ignore[index]
    assert (log.status, log.usage_estimated) == ("error", True)
    assert log.cost_micros > 0
    assert _balance(personas.org) == FUNDS - log.cost_micros
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_stream_failing_before_text_is_a_typed_error(
    sdk: anthropic.Anthropic, personas: Personas
) -> None:
    with (
        pytest.raises(anthropic.RateLimitError),
        sdk.messages.stream(
            model=GPT, max_tokens=20, messages=[{"role": "user", "content": "[[sandbox:http_429]]"}]
        ) as stream,
    ):
        list(stream.text_stream)
    assert _balance(personas.org) == FUNDS
    _audit_ok()


# --- HTTP: auth, bad input, credit, tenancy --------------------------------------------------
def _post(body: Any, **headers: str) -> Any:
    data = body if isinstance(body, str) else json.dumps(body)
    return Client().post(URL, data, content_type="application/json", headers=headers)


def test_bearer_and_x_api_key_both_authenticate(personas: Personas) -> None:
    _fund(personas.org)
    secret = _key(personas)
    assert _post(_body(), **{"x-api-key": secret}).status_code == 200
    response = _post(_body(), authorization=f"Bearer {secret}")
    assert response.status_code == 200
    assert response.json()["type"] == "message"
    assert response["request-id"] == response["x-request-id"]
    assert response["x-llmwise-cost-micros"] == str(response.json()["llmwise"]["cost_micros"])


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "lw-garbage"}, {"authorization": "Basic x"}])
def test_bad_keys_are_401_in_anthropic_shape(personas: Personas, headers: dict[str, str]) -> None:
    response = _post(_body(), **headers)
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{nope", 400, None),
        ({k: v for k, v in _body().items() if k != "max_tokens"}, 400, "max_tokens"),
        (_body(max_tokens=0), 400, "max_tokens"),
        (_body(max_tokens=10_000_000), 400, "max_tokens"),
        ({**_body(), "model": ""}, 400, "model"),
        ({**_body(), "messages": []}, 400, "messages"),
        (
            {**_body(), "messages": [{"role": "system", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        (
            {**_body(), "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            400,
            "messages.0.content.0",
        ),
        ({**_body(), "system": 5}, 400, "system"),
        (_body(temperature=1.5), 400, "temperature"),
        (_body(top_p="high"), 400, "top_p"),
        (_body(stop_sequences="END"), 400, "stop_sequences"),
        (_body(stream="yes"), 400, "stream"),
        (_body(top_k=5), 400, "top_k"),
        (_body(metadata={"user_id": 7}), 400, "metadata.user_id"),
        ({**_body(), "model": "no-such-model"}, 404, "model"),
    ],
)
def test_bad_input_is_refused_in_anthropic_shape_and_nothing_charged(
    personas: Personas, sandbox: SandboxServer, body: Any, status: int, param: str | None
) -> None:
    wallet = _fund(personas.org)
    before = sandbox.app.chat_calls
    response = _post(body, **{"x-api-key": _key(personas)})
    assert response.status_code == status, response.content
    payload = response.json()
    assert payload["type"] == "error"
    expected_type = "not_found_error" if status == 404 else "invalid_request_error"
    assert payload["error"]["type"] == expected_type
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    assert not Reservation.objects.exists()
    assert sandbox.app.chat_calls == before


def test_no_credit_is_402_billing_error_and_nothing_goes_upstream(
    personas: Personas, sandbox: SandboxServer
) -> None:
    _fund(personas.org, 1)
    before = sandbox.app.chat_calls
    response = _post(_body(), **{"x-api-key": _key(personas)})
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "billing_error"
    assert sandbox.app.chat_calls == before
    assert not Reservation.objects.exists()


def test_other_tenant_key_bills_its_own_org_only(personas: Personas) -> None:
    _fund(personas.org)
    _fund(personas.other_org)
    response = _post(_body(), **{"x-api-key": _key(personas, personas.other_org)})
    assert response.status_code == 200
    assert _balance(personas.org) == FUNDS
    assert _balance(personas.other_org) == FUNDS - response.json()["llmwise"]["cost_micros"]
    assert RequestLog.objects.get().organization == personas.other_org


def test_max_tokens_cut_is_stop_reason_max_tokens(personas: Personas) -> None:
    _fund(personas.org)
    response = _post(
        _body("Write a long essay about the sea.", max_tokens=3), **{"x-api-key": _key(personas)}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] <= 3


def test_get_is_an_anthropic_shaped_405(personas: Personas) -> None:
    response = Client().get(URL, headers={"x-api-key": _key(personas)})
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wire_shape_field_by_field(personas: Personas) -> None:
    _fund(personas.org)
    body = _post(_body(), **{"x-api-key": _key(personas)}).json()
    assert set(body) >= {"id", "type", "role", "model", "content", "stop_reason", "usage"}
    assert set(body["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }
    assert body["content"] == [{"type": "text", "text": body["content"][0]["text"]}]
