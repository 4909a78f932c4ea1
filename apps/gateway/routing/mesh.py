"""Mesh mode: a request's failover chain, and the loop that walks it.

A chain is the requested model followed by its fallbacks (``"fallbacks": [...]``, or
``"mesh": true`` for the default alternatives of its tier). :class:`ChainRun` tries the members in
order, asking :mod:`.health` before each one: members whose breaker is open (or whose provider
cools down after sustained 429s) are skipped, a half-open one is tried only by the caller that
wins its probe slot. A retryable failure (ProviderError.retryable: connection error, timeout,
408, 429, 5xx, 529, Gemini RESOURCE_EXHAUSTED/UNAVAILABLE) moves on to the next member; anything
else is returned at once. The callers (:mod:`apps.gateway.calls`) only fail over before a byte
of the answer went out: a non-streaming call has sent nothing until it returns, and a stream is
committed at its first event.

When every member was skipped, the least-recently-failed one is tried anyway: failing a request
without trying anything would turn a stale breaker into an outage of our own. When everything
tried failed, a chain of several models answers one 503 ``all_providers_failed`` listing the
attempts; a lone model answers its own provider error, as without mesh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.accounts.models import ApiKey
from llmwise.errors import ApplicationError

from ..credentials import Credential
from ..models import CatalogModel
from ..providers.base import TYPE_UPSTREAM, ChatRequest, ProviderError
from ..selectors import acatalog_resolve
from . import health

T = TypeVar("T")

STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_SKIPPED: Final = "skipped"
REASON_REQUESTED: Final = "requested"
REASON_FALLBACK: Final = "fallback"


class AllProvidersFailed(ApplicationError):
    """Every model of a chain failed or was unavailable: one 503, nothing charged."""

    status_code: int = 503
    error_type = TYPE_UPSTREAM
    code = "all_providers_failed"

    def __init__(self, message: str, *, attempts: list[dict[str, Any]], retry_after: float | None):
        super().__init__(message)
        self.attempts = attempts
        self.retry_after = retry_after


@dataclass(frozen=True)
class Member:
    """One model of a chain, with the key it is called with and its upstream request."""

    model: CatalogModel
    credential: Credential
    upstream: ChatRequest

    @property
    def byok(self) -> bool:
        return self.credential.byok


@dataclass(frozen=True)
class Attempt:
    model: str
    provider: str
    status: str  # ok, error, skipped
    error_code: str
    latency_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
        }


def _elapsed_ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


def _same_tier(model: CatalogModel) -> list[CatalogModel]:
    return list(
        CatalogModel.objects.filter(enabled=True, tier=model.tier)
        .exclude(pk=model.pk)
        .order_by("output_price_micros_per_mtok", "input_price_micros_per_mtok", "id")
    )


async def mesh_alternatives(
    *, model: CatalogModel, api_key: ApiKey, max_tokens: int | None
) -> list[CatalogModel]:
    """The default fallbacks of ``model`` for ``"mesh": true``: the tier's chain from
    ``GATEWAY_MESH_DEFAULT_CHAINS`` when one is configured, else the same-tier models of the
    catalog, other providers first (a provider outage usually takes all its models), cheapest
    first. Models the key may not use, or that cannot honour ``max_tokens``, are left out."""
    configured: list[str] = settings.GATEWAY_MESH_DEFAULT_CHAINS.get(model.tier) or []
    if configured:
        candidates = [m for m in [await acatalog_resolve(model_id=i) for i in configured] if m]
    else:
        candidates = await sync_to_async(_same_tier)(model)
        candidates.sort(key=lambda m: m.provider == model.provider)  # stable: price order kept
    allowed = set(api_key.allowed_models)
    chosen: list[CatalogModel] = []
    for candidate in candidates:
        if candidate.id == model.id or candidate.id in {c.id for c in chosen}:
            continue
        if allowed and candidate.id not in allowed:
            continue
        if max_tokens is not None and max_tokens > candidate.max_output_tokens:
            continue
        chosen.append(candidate)
    return chosen[: max(settings.GATEWAY_MESH_MAX_CHAIN - 1, 0)]


@dataclass
class ChainRun:
    """One walk along a chain: the attempts made so far and the upstream time they took."""

    members: list[Member]
    attempts: list[Attempt] = field(default_factory=list)
    upstream_ms: int = 0
    last: Member | None = None  # the member tried last (or answering)
    gate: health.Gate | None = None  # the answering member's gate
    answered_at: float = 0.0  # perf_counter() when the answering attempt started

    async def until_answer(self, call: Callable[[Member], Awaitable[T]]) -> tuple[Member, T]:
        """Call members in order until one answers; returns it and what ``call`` returned.

        Raises the first non-retryable error as it is (BYOK-translated), or, when nothing
        answered, :class:`AllProvidersFailed` (several members) / the lone member's error.
        """
        skipped: list[tuple[Member, health.Gate]] = []
        errors: list[ProviderError] = []
        tried = False
        for member in self.members:
            gate = await health.attempt_gate(member.model.provider, member.model.id)
            if not gate.go:
                self._note(member, STATUS_SKIPPED, str(gate.skip or ""), 0)
                skipped.append((member, gate))
                continue
            tried = True
            answered, value = await self._try(member, gate, call, errors)
            if answered:
                return member, value
        if not tried and skipped:
            # Everything is unavailable: the least-recently-failed member is the likeliest to
            # have recovered (chain order breaks ties).
            member, gate = min(skipped, key=lambda pair: pair[1].last_failure_at)
            answered, value = await self._try(member, health.gate_forced(gate), call, errors)
            if answered:
                return member, value
        raise self._failure(errors)

    async def _try(
        self,
        member: Member,
        gate: health.Gate,
        call: Callable[[Member], Awaitable[T]],
        errors: list[ProviderError],
    ) -> tuple[bool, Any]:
        self.last = member
        started = time.perf_counter()
        try:
            value = await call(member)
        except ProviderError as exc:
            latency = _elapsed_ms(started)
            self.upstream_ms += latency
            # With the customer's own key, a refused key or an empty quota is theirs to fix.
            error = exc.as_byok() if member.byok else exc
            self._note(member, STATUS_ERROR, error.code, latency)
            await health.attempt_record(gate, error=exc, latency_ms=latency, byok=member.byok)
            if not exc.retryable:
                if error is not exc:
                    raise error from exc
                raise
            errors.append(error)
            return False, None
        except BaseException:
            self.upstream_ms += _elapsed_ms(started)
            await asyncio.shield(health.attempt_abandon(gate))
            raise
        self.gate = gate
        self.answered_at = started
        return True, value

    def answered(self, member: Member, latency_ms: int) -> None:
        """Note the answering attempt (its latency as the caller measures it)."""
        self.upstream_ms += latency_ms
        self._note(member, STATUS_OK, "", latency_ms)

    def _note(self, member: Member, status: str, code: str, latency_ms: int) -> None:
        model = member.model
        self.attempts.append(Attempt(model.id, model.provider, status, code, latency_ms))

    def _failure(self, errors: list[ProviderError]) -> ApplicationError:
        if len(self.members) == 1 and errors:
            return errors[-1]
        described = "; ".join(
            f"{a.model} ({a.provider}): {a.status}{f' {a.error_code}' if a.error_code else ''}"
            for a in self.attempts
        )
        hints = [e.retry_after for e in errors if e.retry_after is not None]
        return AllProvidersFailed(
            f"Every model of the chain failed or is unavailable ({described}). "
            "Nothing was charged; retry later or add fallbacks.",
            attempts=[a.as_dict() for a in self.attempts],
            retry_after=min(hints) if hints else None,
        )

    def route(self, *, requested: str, chosen: CatalogModel | None) -> dict[str, Any]:
        """The route as the response, the request log and the native API show it."""
        primary = self.members[0].model
        route: dict[str, Any] = {
            "requested": requested,
            "chosen": chosen.id if chosen is not None else None,
            "reason": REASON_REQUESTED
            if chosen is None or chosen.id == primary.id
            else REASON_FALLBACK,
            "attempts": [a.as_dict() for a in self.attempts],
        }
        if len(self.members) > 1:
            route["chain"] = [m.model.id for m in self.members]
        return route
