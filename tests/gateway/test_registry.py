"""Settings decide where each provider goes: the real API or the sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from apps.gateway.providers.anthropic import AnthropicAdapter
from apps.gateway.providers.base import ProviderError
from apps.gateway.providers.gemini import GeminiAdapter
from apps.gateway.providers.openai import OpenAIAdapter
from apps.gateway.providers.openrouter import OpenRouterAdapter
from apps.gateway.providers.registry import (
    platform_key,
    provider_adapter,
    provider_base_url,
    provider_uses_sandbox,
)
from apps.gateway.sandbox import SandboxServer

from .conftest import MODELS, chat

NO_KEYS = dict.fromkeys(MODELS, "")


def test_real_urls_when_the_sandbox_is_off(settings: Any) -> None:
    settings.PROVIDER_SANDBOX = False
    settings.PROVIDER_SANDBOX_KEYLESS = False
    assert provider_base_url("openai") == "https://api.openai.com/v1"
    assert provider_base_url("anthropic") == "https://api.anthropic.com"
    assert provider_base_url("groq") == "https://api.groq.com/openai/v1"


def test_the_switch_sends_every_provider_to_the_sandbox(settings: Any) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = "http://127.0.0.1:9100/"
    settings.PROVIDER_KEYS = {**NO_KEYS, "openai": "sk-real"}
    assert provider_base_url("openai") == "http://127.0.0.1:9100/openai/v1"
    assert provider_base_url("openrouter") == "http://127.0.0.1:9100/openrouter/api/v1"
    assert provider_base_url("gemini") == "http://127.0.0.1:9100/gemini"
    assert platform_key("openai") == "sk-real"
    assert platform_key("anthropic") == "sk-sandbox-anthropic"


def test_keyless_providers_go_to_the_sandbox_and_keyed_ones_do_not(settings: Any) -> None:
    settings.PROVIDER_SANDBOX = False
    settings.PROVIDER_SANDBOX_KEYLESS = True
    settings.PROVIDER_SANDBOX_URL = "http://127.0.0.1:9100"
    settings.PROVIDER_KEYS = {**NO_KEYS, "anthropic": "sk-ant-real"}
    assert provider_uses_sandbox("openai")
    assert not provider_uses_sandbox("anthropic")
    assert provider_base_url("anthropic") == "https://api.anthropic.com"
    assert platform_key("anthropic") == "sk-ant-real"


def test_sandbox_without_a_url_is_a_clear_error(settings: Any) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = ""
    with pytest.raises(ProviderError) as caught:
        provider_base_url("openai")
    assert (caught.value.status, caught.value.code) == (503, "sandbox_not_running")


@pytest.mark.parametrize(
    ("provider", "adapter_class"),
    [
        ("openai", OpenAIAdapter),
        ("anthropic", AnthropicAdapter),
        ("gemini", GeminiAdapter),
        ("openrouter", OpenRouterAdapter),
        ("mistral", OpenAIAdapter),
        ("groq", OpenAIAdapter),
        ("deepseek", OpenAIAdapter),
        ("xai", OpenAIAdapter),
        ("together", OpenAIAdapter),
    ],
)
def test_each_provider_has_its_adapter(provider: str, adapter_class: type, settings: Any) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = "http://127.0.0.1:9100"
    adapter = provider_adapter(provider)
    assert type(adapter) is adapter_class
    assert provider_adapter(provider) is adapter  # cached while the settings hold


@pytest.mark.anyio
@pytest.mark.usefixtures("_close_clients")
@pytest.mark.parametrize("provider", sorted(MODELS))
async def test_registry_adapter_calls_the_sandbox(
    provider: str, sandbox: SandboxServer, settings: Any
) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    result = await provider_adapter(provider).complete(
        chat(model=MODELS[provider]), api_key=platform_key(provider)
    )
    assert result.text.startswith(f"Sandbox answer from {MODELS[provider]}")


def test_byok_calls_go_to_the_real_provider_in_the_embedded_default(settings: Any) -> None:
    settings.PROVIDER_SANDBOX = False
    settings.PROVIDER_SANDBOX_KEYLESS = True
    settings.PROVIDER_SANDBOX_URL = "http://127.0.0.1:9"
    settings.PROVIDER_KEYS = {}
    real = settings.PROVIDER_BASE_URLS["anthropic"]
    assert provider_base_url("anthropic").startswith("http://127.0.0.1:9/anthropic")
    assert provider_base_url("anthropic", byok=True) == real
    settings.PROVIDER_SANDBOX = True  # tests and demos force everything to the sandbox
    assert provider_base_url("anthropic", byok=True).startswith("http://127.0.0.1:9/")
