"""Generated request histories with known answers, shaped like the call service's log rows."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from django.utils import timezone

from apps.accounts.models import ApiKey, Organization
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage

_ids = itertools.count(1)

CHEAP = "gpt-4o-mini"  # model A: cheaper and as good for classification
CURRENT = "gpt-4.1"  # what classification runs on today
FLAKY = "claude-haiku-4.5"  # model B: fails 20%
DRIFTING = "deepseek-chat"  # fine for two weeks, failing in the last days


def rows(
    org: Organization,
    *,
    count: int,
    model: str,
    category: str = "classification",
    error_every: int = 0,
    api_key: ApiKey | None = None,
    ago: timedelta = timedelta(hours=2),
    spread: timedelta = timedelta(0),
    prompt: str | None = None,
    chain: list[str] | None = None,
    prompt_tokens: int = 400,
    completion_tokens: int = 20,
    latency_ms: int = 500,
    **fields: Any,
) -> list[RequestLog]:
    """``count`` log rows of ``model`` in ``category``: every ``error_every``-th one failed;
    spread evenly over ``spread`` ending ``ago`` in the past. Text is kept unless the org or the
    key is zero-retention (then ``prompt`` is None, as the call service writes it)."""
    catalog = CatalogModel.objects.get(pk=model)
    keeps_text = api_key.retains_text if api_key is not None else not org.zero_retention
    now = timezone.now()
    out = []
    for i in range(count):
        n = next(_ids)
        failed = bool(error_every) and i % error_every == 0
        usage = Usage(0 if failed else prompt_tokens, 0 if failed else completion_tokens)
        step = spread / count if count else timedelta(0)
        route: dict[str, Any] = {"requested": model, "chosen": None if failed else model}
        route["reason"] = "requested"
        route["category"] = category
        if chain:
            route["chain"] = chain
            route["attempts"] = [
                {
                    "model": model,
                    "provider": catalog.provider,
                    "status": "error" if failed else "ok",
                }
            ]
        text = prompt if prompt is not None else f"Label this message {n}: spam or not?"
        values: dict[str, Any] = {
            "organization": org,
            "api_key": api_key,
            "request_id": f"req_opt{n:08d}",
            "endpoint": "openai.chat",
            "requested_model": model,
            "model": model,
            "provider": catalog.provider,
            "status": RequestLog.Status.ERROR if failed else RequestLog.Status.OK,
            "http_status": 502 if failed else 200,
            "error_type": "upstream_error" if failed else "",
            "finish_reason": "" if failed else "stop",
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_micros": cost_micros(model=catalog, usage=usage),
            "latency_ms": latency_ms + (i % 7) * 10,
            "upstream_ms": latency_ms,
            "route": route,
            "category": category,
            "prompt": [{"role": "user", "content": text}] if keeps_text else None,
            "completion": ("not spam" if not failed else "") if keeps_text else "",
            "created_at": now - ago - step * i,
        }
        values.update(fields)
        out.append(RequestLog(**values))
    return RequestLog.objects.bulk_create(out)


def known_history(org: Organization, *, key: ApiKey, runaway: ApiKey) -> None:
    """The history every known-answer test reads (see the module's constants)."""
    span = timedelta(days=12)
    chain = [CURRENT, FLAKY]
    rows(
        org,
        count=300,
        model=CURRENT,
        error_every=100,
        api_key=key,
        spread=span,
        chain=chain,
        latency_ms=900,
    )
    rows(org, count=100, model=CHEAP, error_every=100, api_key=key, spread=span, latency_ms=400)
    rows(org, count=100, model=FLAKY, error_every=5, api_key=key, spread=span, latency_ms=700)
    # Summaries elsewhere keep the categories honest: not every category gets a recommendation.
    rows(org, count=30, model=CHEAP, category="summarization", api_key=key, spread=span)
    # Drifting: clean for ten days, then half the calls fail in the last two.
    rows(
        org,
        count=100,
        model=DRIFTING,
        category="qa",
        api_key=key,
        ago=timedelta(days=3),
        spread=timedelta(days=10),
    )
    rows(
        org,
        count=40,
        model=DRIFTING,
        category="qa",
        api_key=key,
        error_every=2,
        spread=timedelta(days=1, hours=12),
    )
    # A key that spent ~$0.03 last week and ~$5 this week.
    rows(
        org,
        count=10,
        model=CURRENT,
        category="code",
        api_key=runaway,
        ago=timedelta(days=10),
        prompt_tokens=1000,
        completion_tokens=100,
    )
    rows(
        org,
        count=50,
        model="claude-sonnet-4.5",
        category="code",
        api_key=runaway,
        spread=timedelta(days=3),
        prompt_tokens=20_000,
        completion_tokens=2_000,
    )
    # The same prompt 15 times: a cache opportunity.
    rows(
        org,
        count=15,
        model=CHEAP,
        category="chitchat",
        api_key=key,
        prompt="What are your hours?",
        spread=timedelta(days=5),
    )
