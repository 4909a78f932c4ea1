"""OpenRouter (providers.md §4): the OpenAI wire at ``/api/v1`` plus its attribution headers,
its ``{"error": {"code": <int>, ...}}`` bodies (402 out of credits, 403 moderation, 408, 502,
503), errors inside 200 responses and streams, and ``: OPENROUTER PROCESSING`` keep-alives (which
the SSE reader already skips)."""

from __future__ import annotations

from .openai import OpenAIAdapter, OpenAIQuirks
from .transport import PoolLimits, Timeouts

ATTRIBUTION_TITLE = "LLMWise"
OPENROUTER_QUIRKS = OpenAIQuirks(max_tokens_field="max_tokens")


class OpenRouterAdapter(OpenAIAdapter):
    """OpenAI-shaped; only the headers and error bodies differ, and those the base parses by
    their integer ``code`` already. ``site_url`` feeds OpenRouter's app attribution."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        limits: PoolLimits | None = None,
        site_url: str = "",
    ) -> None:
        headers = {"x-title": ATTRIBUTION_TITLE}
        if site_url:
            headers["http-referer"] = site_url
        super().__init__(
            provider=provider,
            base_url=base_url,
            timeouts=timeouts,
            limits=limits,
            quirks=OPENROUTER_QUIRKS,
            headers=headers,
        )
