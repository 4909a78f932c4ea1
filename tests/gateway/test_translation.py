"""Request translation: what each adapter refuses before sending and how it reshapes messages
(the sandbox validates the real constraints: alternating roles, strict fields)."""

from __future__ import annotations

from typing import Any

import pytest

from apps.gateway.providers.base import ChatMessage, ChatRequest, ProviderError

from .conftest import MODELS

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("_close_clients")]


def conversation(model: str, **changes: Any) -> ChatRequest:
    return ChatRequest(
        upstream_model=model,
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "First part."),
            ChatMessage("user", "Second part: what is the capital of France?"),
            ChatMessage("assistant", "Paris."),
            ChatMessage("developer", "Answer in English."),
            ChatMessage("user", "And of Italy?"),
        ),
        max_tokens=100,
        **changes,
    )


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai", "mistral"])
async def test_system_and_consecutive_turns_are_reshaped(provider: str, make_adapter: Any) -> None:
    request = conversation(MODELS[provider], temperature=0.5, top_p=0.9, stop=("END",), user="u1")
    result = await make_adapter(provider).complete(request, api_key="k")
    assert 'you said "And of Italy?"' in result.text


async def test_anthropic_refuses_temperature_above_one_before_sending(make_adapter: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        await make_adapter("anthropic").complete(
            conversation(MODELS["anthropic"], temperature=1.5), api_key="k"
        )
    error = caught.value
    assert (error.status, error.code, error.param, error.upstream_status) == (
        400,
        "unsupported_parameter",
        "temperature",
        None,
    )


async def test_anthropic_without_max_tokens_uses_the_fallback(make_adapter: Any) -> None:
    request = conversation(MODELS["anthropic"])
    request = ChatRequest(upstream_model=request.upstream_model, messages=request.messages)
    result = await make_adapter("anthropic").complete(request, api_key="k")
    assert result.finish_reason == "stop"


@pytest.mark.parametrize(("provider", "param"), [("mistral", "seed"), ("groq", "logit_bias")])
async def test_unsupported_extra_parameter_is_refused(
    provider: str, param: str, make_adapter: Any
) -> None:
    request = conversation(MODELS[provider], extra={param: 1})
    with pytest.raises(ProviderError) as caught:
        await make_adapter(provider).complete(request, api_key="k")
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "unsupported_parameter",
        param,
    )


async def test_extra_fields_pass_through_to_hosts_that_take_them(make_adapter: Any) -> None:
    request = conversation(MODELS["openrouter"], extra={"provider": {"data_collection": "deny"}})
    result = await make_adapter("openrouter").complete(request, api_key="k")
    assert result.finish_reason == "stop"


async def test_mistral_422_detail_body_is_parsed(make_adapter: Any) -> None:
    # A field Mistral refuses slips through "extra": its 422 body (message is an object) must
    # still become a clean 400 in our shape.
    request = conversation(MODELS["mistral"], extra={"stream_options": {"include_usage": True}})
    with pytest.raises(ProviderError) as caught:
        await make_adapter("mistral").complete(request, api_key="k")
    assert (caught.value.status, caught.value.retryable, caught.value.upstream_status) == (
        400,
        False,
        422,
    )
    assert "Extra inputs" in caught.value.message
