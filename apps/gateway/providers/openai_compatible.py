"""The OpenAI-compatible family (providers.md §5): one adapter, one quirks record per host.

Adding a host is adding a line here and a base URL in settings, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

from .openai import OpenAIQuirks

# OpenAI parameters these hosts refuse: we answer a clear 400 instead of a vendor 422.
_MISTRAL_REFUSES = frozenset({"logit_bias", "seed", "logprobs", "top_logprobs", "service_tier"})
_GROQ_REFUSES = frozenset({"logit_bias", "logprobs", "top_logprobs"})

QUIRKS: Mapping[str, OpenAIQuirks] = {
    # Mistral validates strictly: no stream_options (it reports usage in the last chunk anyway),
    # no user, and only the old max_tokens name.
    "mistral": OpenAIQuirks(
        max_tokens_field="max_tokens",
        stream_usage_option=False,
        accepts_user=False,
        unsupported_params=_MISTRAL_REFUSES,
    ),
    # Groq puts stream usage in x_groq.usage on the final chunk.
    "groq": OpenAIQuirks(unsupported_params=_GROQ_REFUSES, usage_vendor_field="x_groq"),
    # DeepSeek reports cache hits as prompt_cache_hit_tokens (parsed by openai.usage_from).
    "deepseek": OpenAIQuirks(max_tokens_field="max_tokens"),
    "xai": OpenAIQuirks(max_tokens_field="max_tokens"),
    # Together returns usage on the final chunk without being asked.
    "together": OpenAIQuirks(max_tokens_field="max_tokens", stream_usage_option=False),
}
