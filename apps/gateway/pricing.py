"""Token arithmetic for money: exact integer costs and honest estimates.

Everything here is integers (ARCHITECTURE §3): prices are micro-USD per million tokens and a
cost rounds *up* (once, over the sum) to the next micro-USD, so we never under-charge by a
rounding error.
"""

from __future__ import annotations

from collections.abc import Iterable

from .models import CatalogModel
from .providers.base import ChatMessage, Usage

TOKENS_PER_PRICE_UNIT = 1_000_000  # catalog prices are per million tokens
CHARS_PER_TOKEN_ESTIMATE = 4  # the "characters / 4" floor of providers.md §7
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators each message costs on every wire format


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_micros(*, model: CatalogModel, usage: Usage) -> int:
    """What ``usage`` costs on ``model``, in micro-USD: one round-up over the whole sum
    (providers.md §7), so a request never pays more than one micro-USD of rounding.

    ``usage.prompt_tokens`` includes the cached ones (OpenAI's convention, which every adapter
    normalizes to), so uncached input = prompt - cached. Cached input without a cached price is
    billed at the input price. Reasoning tokens are already inside ``completion_tokens``.
    """
    cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
    cached_price = model.cached_input_price_micros_per_mtok
    if cached_price is None:
        cached_price = model.input_price_micros_per_mtok
    return _ceil_div(
        (usage.prompt_tokens - cached) * model.input_price_micros_per_mtok
        + cached * cached_price
        + usage.completion_tokens * model.output_price_micros_per_mtok,
        TOKENS_PER_PRICE_UNIT,
    )


def reservation_micros(*, model: CatalogModel, prompt_tokens: int, max_tokens: int | None) -> int:
    """The worst case to hold before calling upstream: the prompt estimate plus every output token
    the request allows (the catalog default when the request gives none), all uncached."""
    output = max_tokens if max_tokens is not None else model.default_max_tokens
    return _ceil_div(
        prompt_tokens * model.input_price_micros_per_mtok
        + output * model.output_price_micros_per_mtok,
        TOKENS_PER_PRICE_UNIT,
    )


def tokens_estimate(*, text: str) -> int:
    """A conservative token count for ``text`` when no provider count exists (chars / 4, up)."""
    return _ceil_div(len(text), CHARS_PER_TOKEN_ESTIMATE)


def prompt_tokens_estimate(*, messages: Iterable[ChatMessage]) -> int:
    """Estimated prompt tokens for a request: content plus a fixed per-message overhead."""
    return sum(
        tokens_estimate(text=message.content) + MESSAGE_OVERHEAD_TOKENS for message in messages
    )


def usage_estimate(*, messages: Iterable[ChatMessage], completion_text: str) -> Usage:
    """Usage for a call whose provider never reported one (a dropped or cut stream)."""
    return Usage(
        prompt_tokens=prompt_tokens_estimate(messages=messages),
        completion_tokens=tokens_estimate(text=completion_text),
        estimated=True,
    )
