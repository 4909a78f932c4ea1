"""Which failure the sandbox plays, for whom, and how often.

Three ways to ask for one, most specific first: the ``x-sandbox-fault`` request header (tests
calling the sandbox directly), a ``[[sandbox:<fault>]]`` marker anywhere in the prompt (tests
going through the gateway, which forwards prompts but not headers), and a rule set at run time
with ``POST /_control/faults`` (per provider, optionally per model, N times or until cleared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Fault(StrEnum):
    NONE = "none"
    HTTP_400 = "http_400"  # context length exceeded, in the provider's shape
    HTTP_401 = "http_401"
    HTTP_429 = "http_429"  # rate limited, with Retry-After
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    OVERLOADED_529 = "overloaded_529"  # Anthropic's overloaded_error (503 elsewhere)
    RESOURCE_EXHAUSTED = "resource_exhausted"  # Gemini's 429 (a 429 elsewhere)
    UNAVAILABLE = "unavailable"  # Gemini's 503 (a 503 elsewhere)
    INSUFFICIENT_QUOTA = "insufficient_quota"  # out of money upstream, in the provider's words
    CONTENT_POLICY = "content_policy"  # the request refused by moderation
    CONTENT_FILTER = "content_filter"  # a 200 answer cut by the output filter
    MIDSTREAM_DROP = "midstream_drop"  # some deltas, then the connection is dropped
    MIDSTREAM_ERROR = "midstream_error"  # some deltas, then the provider's in-stream error
    INVALID_JSON = "invalid_json"  # a 200 whose body (or one stream event) is not JSON
    TRUNCATED_SSE = "truncated_sse"  # some deltas, then a clean end without the terminal event
    NO_USAGE = "no_usage"  # a complete stream that never reports usage
    TIMEOUT = "timeout"  # accept the request and never answer
    STALL = "stall"  # start the answer (head, some deltas or half the body), then go silent
    TRICKLE = "trickle"  # start the answer, then one byte at a time, never finishing a line


# Faults that answer with an HTTP error before any body.
HTTP_ERROR_FAULTS = frozenset(
    {
        Fault.HTTP_400,
        Fault.HTTP_401,
        Fault.HTTP_429,
        Fault.HTTP_500,
        Fault.HTTP_503,
        Fault.OVERLOADED_529,
        Fault.RESOURCE_EXHAUSTED,
        Fault.UNAVAILABLE,
        Fault.INSUFFICIENT_QUOTA,
        Fault.CONTENT_POLICY,
    }
)
# Faults that cut a stream after some deltas.
MIDSTREAM_FAULTS = frozenset(
    {Fault.MIDSTREAM_DROP, Fault.MIDSTREAM_ERROR, Fault.INVALID_JSON, Fault.TRUNCATED_SSE}
)
# Faults that start an answer and then hold the connection without finishing it (a hung or
# crawling upstream): only the caller's timeouts end them.
SLOW_FAULTS = frozenset({Fault.STALL, Fault.TRICKLE})

FAULT_HEADER = "x-sandbox-fault"
LATENCY_HEADER = "x-sandbox-latency-ms"
CHUNK_DELAY_HEADER = "x-sandbox-chunk-delay-ms"
PROMPT_MARKER = re.compile(r"\[\[sandbox:([a-z0-9_]+)\]\]")
ANY_PROVIDER = "*"


@dataclass(slots=True)
class FaultRule:
    fault: Fault
    remaining: int | None = None  # None: until cleared
    latency_ms: int | None = None
    chunk_delay_ms: int | None = None
    retry_after: int | None = None


@dataclass(slots=True)
class FaultBook:
    """Rules keyed by (provider or "*", model or None). Used from the server's one event loop
    only, so it needs no lock."""

    rules: dict[tuple[str, str | None], FaultRule] = field(default_factory=dict)

    def set(self, *, provider: str, model: str | None, rule: FaultRule) -> None:
        self.rules[(provider, model)] = rule

    def clear(self, *, provider: str | None = None, model: str | None = None) -> int:
        doomed = [
            key
            for key in self.rules
            if (provider is None or key[0] == provider) and (model is None or key[1] == model)
        ]
        for key in doomed:
            del self.rules[key]
        return len(doomed)

    def take(self, *, provider: str, model: str) -> FaultRule | None:
        """The rule for this call (most specific first), counting it down."""
        for key in (
            (provider, model),
            (provider, None),
            (ANY_PROVIDER, model),
            (ANY_PROVIDER, None),
        ):
            rule = self.rules.get(key)
            if rule is None:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self.rules[key]
            return rule
        return None

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "provider": provider,
                "model": model,
                "fault": rule.fault.value,
                "remaining": rule.remaining,
                "latency_ms": rule.latency_ms,
                "chunk_delay_ms": rule.chunk_delay_ms,
                "retry_after": rule.retry_after,
            }
            for (provider, model), rule in self.rules.items()
        ]


def fault_from_prompt(texts: list[str]) -> Fault | None:
    for text in texts:
        match = PROMPT_MARKER.search(text)
        if match is not None:
            try:
                return Fault(match.group(1))
            except ValueError:
                return None
    return None
