"""Which adapter serves which provider, at which URL, with which key.

Reads settings on every call (cheap attribute lookups) so the sandbox URL, set at run time by
whoever starts the sandbox server, and test overrides take effect at once; adapters themselves
are cached per (provider, base URL, timeouts).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

from ..models import Provider
from .adapter import ProviderAdapter
from .anthropic import AnthropicAdapter
from .base import TYPE_UPSTREAM, ProviderError
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter
from .openai_compatible import QUIRKS
from .openrouter import OpenRouterAdapter
from .transport import PoolLimits, Timeouts

SANDBOX_KEY_PREFIX = "sk-sandbox-"  # what we send the sandbox when no real key is configured
ADAPTER_CACHE_SIZE = 64


def provider_uses_sandbox(provider: str, *, byok: bool = False) -> bool:
    """True when ``provider`` is served by the sandbox: everything under PROVIDER_SANDBOX, and
    keyless providers under PROVIDER_SANDBOX_KEYLESS (the embedded default) — unless the call
    carries the customer's own key (BYOK), which is a real key for the real provider."""
    if settings.PROVIDER_SANDBOX:
        return True
    if byok:
        return False
    return bool(settings.PROVIDER_SANDBOX_KEYLESS) and not settings.PROVIDER_KEYS.get(provider)


def provider_base_url(provider: str, *, byok: bool = False) -> str:
    """The real base URL from PROVIDER_BASE_URLS, or its sandbox twin: ``<sandbox>/<provider>``
    followed by the real URL's path, so the sandbox sees the provider's real paths."""
    real: str = settings.PROVIDER_BASE_URLS[provider]
    if not provider_uses_sandbox(provider, byok=byok):
        return real
    sandbox = settings.PROVIDER_SANDBOX_URL.rstrip("/")
    if not sandbox:
        raise ProviderError(
            f"{provider} is routed to the sandbox, but no sandbox is running "
            "(PROVIDER_SANDBOX_URL is empty).",
            provider=provider,
            status=503,
            error_type=TYPE_UPSTREAM,
            code="sandbox_not_running",
            retryable=False,
        )
    return f"{sandbox}/{provider}{urlsplit(real).path.rstrip('/')}"


def platform_key(provider: str) -> str:
    """Our own key for ``provider`` (from the environment); a placeholder for the sandbox."""
    key: str = settings.PROVIDER_KEYS.get(provider, "")
    if not key and provider_uses_sandbox(provider):
        return SANDBOX_KEY_PREFIX + provider
    return key


def provider_timeouts() -> Timeouts:
    config = settings.PROVIDER_TIMEOUTS
    return Timeouts(
        connect=float(config["connect"]),
        first_byte=float(config["first_byte"]),
        total=float(config["total"]),
    )


def provider_adapter(provider: str, *, byok: bool = False) -> ProviderAdapter:
    """The adapter for ``provider`` as currently configured (``byok``: the call uses the
    customer's own key, so it goes to the real provider even in the embedded default)."""
    return _adapter(provider, provider_base_url(provider, byok=byok), provider_timeouts())


@lru_cache(maxsize=ADAPTER_CACHE_SIZE)
def _adapter(provider: str, base_url: str, timeouts: Timeouts) -> ProviderAdapter:
    return adapter_for(provider=provider, base_url=base_url, timeouts=timeouts)


def adapter_for(
    *, provider: str, base_url: str, timeouts: Timeouts | None = None
) -> ProviderAdapter:
    """A new adapter for ``provider`` at ``base_url`` (tests and the "verify key" call use this
    directly to choose their own URL and timeouts)."""
    limits = PoolLimits(max_connections=settings.PROVIDER_HTTP_MAX_CONNECTIONS)
    if provider == Provider.ANTHROPIC:
        return AnthropicAdapter(
            provider=provider, base_url=base_url, timeouts=timeouts, limits=limits
        )
    if provider == Provider.GEMINI:
        return GeminiAdapter(provider=provider, base_url=base_url, timeouts=timeouts, limits=limits)
    if provider == Provider.OPENROUTER:
        return OpenRouterAdapter(
            provider=provider,
            base_url=base_url,
            timeouts=timeouts,
            limits=limits,
            site_url=settings.SITE_URL,
        )
    if provider == Provider.OPENAI or provider in QUIRKS:
        return OpenAIAdapter(
            provider=provider,
            base_url=base_url,
            timeouts=timeouts,
            limits=limits,
            quirks=QUIRKS.get(provider),
        )
    raise ValueError(f"no adapter for provider {provider!r}")
