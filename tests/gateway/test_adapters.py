"""Every adapter against its sandbox upstream over real HTTP: text, stream, usage, finish
reasons, and each error class (providers.md §6)."""

from __future__ import annotations

import math
import socket
from contextlib import aclosing
from typing import Any

import pytest

from apps.gateway.providers.adapter import ProviderAdapter
from apps.gateway.providers.base import ChatRequest, ProviderError, StreamEvent
from apps.gateway.providers.registry import adapter_for
from apps.gateway.providers.transport import Timeouts

from .conftest import ALL_PROVIDERS, MODELS, SHORT_TIMEOUTS, chat

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("_close_clients")]

KEY = "sk-test-sandbox"
PROMPT = "Tell me about the weather in Paris today"  # 40 characters: 10 tokens + 3 overhead
PROMPT_TOKENS = 13


def expected_answer(model: str) -> str:
    return (
        f'Sandbox answer from {model}: you said "{PROMPT}". '
        "This reply is deterministic, so tests can assert on every word of it."
    )


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


async def collect(
    adapter: ProviderAdapter, request: ChatRequest
) -> tuple[list[StreamEvent], ProviderError | None]:
    events: list[StreamEvent] = []
    try:
        async with aclosing(adapter.stream(request, api_key=KEY)) as stream:
            async for event in stream:
                events.append(event)
    except ProviderError as error:
        return events, error
    return events, None


# --- success ----------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_complete_returns_text_usage_and_finish(provider: str, make_adapter: Any) -> None:
    model = MODELS[provider]
    result = await make_adapter(provider).complete(chat(PROMPT, model=model), api_key=KEY)

    answer = expected_answer(model)
    assert result.text == answer
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens == PROMPT_TOKENS
    assert result.usage.completion_tokens == tokens(answer)
    assert result.usage.total_tokens == PROMPT_TOKENS + tokens(answer)
    assert result.usage.cached_tokens == 0
    assert result.usage.estimated is False
    assert result.provider_request_id
    assert model in result.upstream_model


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_stream_deltas_concatenate_to_the_same_text(provider: str, make_adapter: Any) -> None:
    model = MODELS[provider]
    adapter = make_adapter(provider)
    whole = await adapter.complete(chat(PROMPT, model=model), api_key=KEY)

    events, error = await collect(adapter, chat(PROMPT, model=model))

    assert error is None
    deltas = [e.text for e in events if e.text]
    assert len(deltas) > 3  # really streamed, not one blob
    assert "".join(deltas) == whole.text
    final = events[-1]
    assert final.text == ""
    assert final.finish_reason == "stop"
    assert final.usage == whole.usage
    assert [e for e in events if e.finish_reason] == [final]


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_max_tokens_cuts_with_finish_reason_length(provider: str, make_adapter: Any) -> None:
    model = MODELS[provider]
    adapter = make_adapter(provider)
    request = chat(PROMPT, model=model, max_tokens=5)

    result = await adapter.complete(request, api_key=KEY)
    events, error = await collect(adapter, request)

    assert result.text == expected_answer(model)[:20]
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert error is None
    assert "".join(e.text for e in events) == result.text
    assert events[-1].finish_reason == "length"


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_cached_prompt_tokens_are_reported(provider: str, make_adapter: Any) -> None:
    # 5,000-char system prompt = 1,250 + 3 tokens; with the 13-token question the prompt is
    # 1,266 tokens, over the 1,024 caching floor; the prefix (1,253) caches in 128-token blocks.
    request = chat(PROMPT, model=MODELS[provider], system="x" * 5000)

    result = await make_adapter(provider).complete(request, api_key=KEY)

    assert result.usage.prompt_tokens == 1266
    assert result.usage.cached_tokens == 1152


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-5-mini"), ("gemini", "gemini-2.5-flash"), ("xai", "grok-4")],
)
async def test_reasoning_tokens_count_as_output(
    provider: str, model: str, make_adapter: Any
) -> None:
    adapter = make_adapter(provider)
    result = await adapter.complete(chat(PROMPT, model=model), api_key=KEY)
    events, _ = await collect(adapter, chat(PROMPT, model=model))

    assert result.usage.reasoning_tokens == 64
    assert result.usage.completion_tokens == tokens(expected_answer(model)) + 64
    assert events[-1].usage == result.usage


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_stream_without_reported_usage_ends_with_usage_none(
    provider: str, make_adapter: Any
) -> None:
    events, error = await collect(
        make_adapter(provider), chat(f"{PROMPT} [[sandbox:no_usage]]", model=MODELS[provider])
    )
    assert error is None
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is None  # the caller estimates and marks it


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_output_filter_maps_to_content_filter(provider: str, make_adapter: Any) -> None:
    result = await make_adapter(provider).complete(
        chat(f"{PROMPT} [[sandbox:content_filter]]", model=MODELS[provider]), api_key=KEY
    )
    assert result.finish_reason == "content_filter"


# --- HTTP errors ------------------------------------------------------------------------------
# fault → (our status, retryable, code); per-provider exceptions below.
HTTP_FAULTS: dict[str, tuple[int, bool, str]] = {
    "http_429": (429, True, "upstream_rate_limited"),
    "resource_exhausted": (429, True, "upstream_rate_limited"),
    "http_500": (502, True, "upstream_server_error"),
    "http_503": (503, True, "upstream_overloaded"),
    "overloaded_529": (503, True, "upstream_overloaded"),
    "unavailable": (503, True, "upstream_overloaded"),
    "http_400": (400, False, "context_length_exceeded"),
    "content_policy": (400, False, "content_policy_violation"),
    "http_401": (502, False, "upstream_auth_failed"),
    "insufficient_quota": (502, False, "upstream_quota_exhausted"),
}
# Gemini's quota and rate limits are one status (RESOURCE_EXHAUSTED): a retryable 429.
EXCEPTIONS = {("gemini", "insufficient_quota"): (429, True, "upstream_rate_limited")}


@pytest.mark.parametrize("fault", sorted(HTTP_FAULTS))
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_http_errors_translate(provider: str, fault: str, make_adapter: Any) -> None:
    status, retryable, code = EXCEPTIONS.get((provider, fault), HTTP_FAULTS[fault])
    adapter = make_adapter(provider)
    request = chat(f"{PROMPT} [[sandbox:{fault}]]", model=MODELS[provider])

    with pytest.raises(ProviderError) as caught:
        await adapter.complete(request, api_key=KEY)
    streamed, stream_error = await collect(adapter, request)

    error = caught.value
    assert (error.status, error.retryable, error.code) == (status, retryable, code)
    assert error.provider == provider
    assert error.upstream_status is not None
    assert error.upstream_status >= 400
    assert streamed == []  # nothing reached the caller
    assert stream_error is not None
    assert (stream_error.status, stream_error.code) == (status, code)
    if status == 429:
        assert error.retry_after == 1.0


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_retry_after_follows_the_upstream_hint(
    provider: str, make_adapter: Any, faults: Any
) -> None:
    faults.set(provider=provider, fault="http_429", retry_after=7)
    with pytest.raises(ProviderError) as caught:
        await make_adapter(provider).complete(chat(PROMPT, model=MODELS[provider]), api_key=KEY)
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_bad_key_is_not_retryable_and_byok_answers_401(
    provider: str, make_adapter: Any
) -> None:
    with pytest.raises(ProviderError) as caught:
        await make_adapter(provider).complete(
            chat(PROMPT, model=MODELS[provider]), api_key="invalid-key"
        )
    error = caught.value
    assert (error.status, error.code, error.retryable) == (502, "upstream_auth_failed", False)
    byok = error.as_byok()
    assert (byok.status, byok.error_type, byok.code) == (
        401,
        "authentication_error",
        "byok_key_invalid",
    )
    assert provider in byok.message


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_unknown_model_is_404(provider: str, make_adapter: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        await make_adapter(provider).complete(chat(PROMPT, model="unknown-model"), api_key=KEY)
    assert (caught.value.status, caught.value.retryable) == (404, False)


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_invalid_json_body_is_a_retryable_502(provider: str, make_adapter: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        await make_adapter(provider).complete(
            chat(f"{PROMPT} [[sandbox:invalid_json]]", model=MODELS[provider]), api_key=KEY
        )
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        502,
        "upstream_invalid_response",
        True,
    )


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_timeout_is_a_retryable_504(provider: str, make_adapter: Any) -> None:
    adapter = make_adapter(provider, timeouts=SHORT_TIMEOUTS)
    request = chat(f"{PROMPT} [[sandbox:timeout]]", model=MODELS[provider])

    with pytest.raises(ProviderError) as caught:
        await adapter.complete(request, api_key=KEY)
    events, stream_error = await collect(adapter, request)

    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        504,
        "upstream_timeout",
        True,
    )
    assert events == []
    assert stream_error is not None
    assert stream_error.status == 504


async def test_unreachable_upstream_is_a_retryable_502() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = adapter_for(provider="openai", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderError) as caught:
        await adapter.complete(chat(PROMPT, model="gpt-4o"), api_key=KEY)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        502,
        "upstream_unreachable",
        True,
    )


# --- failures mid-stream ----------------------------------------------------------------------
STREAM_FAULTS = {
    "midstream_drop": "upstream_stream_interrupted",
    "truncated_sse": "upstream_invalid_response",
    "invalid_json": "upstream_invalid_response",
}


@pytest.mark.parametrize("fault", sorted(STREAM_FAULTS))
@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_stream_failure_after_deltas_is_a_final_502(
    provider: str, fault: str, make_adapter: Any
) -> None:
    model = MODELS[provider]
    events, error = await collect(
        make_adapter(provider), chat(f"{PROMPT} [[sandbox:{fault}]]", model=model)
    )

    assert events, "the deltas before the failure reach the caller"
    assert all(e.text and e.finish_reason is None for e in events)
    assert expected_answer(model).startswith("".join(e.text for e in events))
    assert error is not None
    assert (error.status, error.code) == (502, STREAM_FAULTS[fault])
    assert error.retryable is False  # text already went out: no silent retry


@pytest.mark.parametrize(
    ("provider", "status"),
    [(p, 503 if p in ("anthropic", "gemini") else 502) for p in ALL_PROVIDERS],
)
async def test_error_event_inside_the_stream(provider: str, status: int, make_adapter: Any) -> None:
    events, error = await collect(
        make_adapter(provider),
        chat(f"{PROMPT} [[sandbox:midstream_error]]", model=MODELS[provider]),
    )
    assert events
    assert error is not None
    assert error.status == status
    assert error.retryable is False


async def test_stream_total_deadline_is_a_504_after_deltas(make_adapter: Any, faults: Any) -> None:
    faults.set(provider="openai", fault="none", chunk_delay_ms=60)
    adapter = make_adapter("openai", timeouts=Timeouts(connect=1.0, first_byte=1.0, total=0.15))

    events, error = await collect(adapter, chat(PROMPT, model=MODELS["openai"]))

    assert events
    assert error is not None
    assert (error.status, error.code, error.retryable) == (504, "upstream_timeout", False)
