"""The official OpenAI Python SDK, unchanged, pointed at LLMWise with ``base_url``."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]


@pytest.fixture
def sdk(
    personas: Personas, settings: Any, sandbox: SandboxServer, live_gateway: LiveGateway
) -> openai.OpenAI:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="sdk tests")
    secret = account_services.api_key_create(
        org=personas.org, name="sdk", created_by=personas.owner
    ).secret
    return openai.OpenAI(api_key=secret, base_url=live_gateway.url + "/v1", max_retries=0)


def test_sdk_chat_completion(sdk: openai.OpenAI, personas: Personas) -> None:
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Name three primary colours."}],
        max_tokens=40,
    )
    assert completion.choices[0].message.content
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    log = RequestLog.objects.get(request_id=completion.id.removeprefix("chatcmpl-"))
    wallet = Wallet.objects.get(organization=personas.org)
    assert wallet.balance_micros == 1_000_000 - log.cost_micros
    assert log.cost_micros > 0


def test_sdk_lists_models(sdk: openai.OpenAI) -> None:
    ids = {model.id for model in sdk.models.list()}
    assert "claude-sonnet-4.5" in ids


def test_sdk_raises_typed_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert not_found.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[sandbox:http_429]]"}]
        )
    bad_key = openai.OpenAI(api_key="lw-wrong", base_url=str(sdk.base_url), max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


def test_async_sdk_chat_and_stream(sdk: openai.OpenAI, personas: Personas) -> None:
    import asyncio

    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(api_key=sdk.api_key, base_url=str(sdk.base_url), max_retries=0)
        completion = await client.chat.completions.create(
            model="claude-haiku-4.5",
            messages=[{"role": "user", "content": "Say something short."}],
            max_tokens=20,
        )
        stream = await client.chat.completions.create(
            model="gemini-2.5-flash",
            messages=[{"role": "user", "content": "Stream something short."}],
            max_tokens=20,
            stream=True,
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return completion.choices[0].message.content or "", streamed

    text, streamed = asyncio.run(run())
    assert text
    assert streamed
    assert RequestLog.objects.filter(organization=personas.org, status="ok").count() == 2
