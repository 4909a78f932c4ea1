"""The call service: one chat request, from catalog lookup to settled money and a log row.

    resolve model → check the key → reserve (one transaction) → call the provider
    → settle + log (one transaction)

Every path out of :func:`chat_call` after the reservation — success, provider error, a bug, or a
cancelled client — settles or releases the hold and writes the request log, so no reservation is
left for the sweeper except after a crash of the whole process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.wallet import services as wallet
from apps.wallet.models import Reservation
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from .credentials import Credential, credential_for
from .limits import Admission, LimitsSnapshot, limits_admit, limits_record, limits_release
from .models import CatalogModel, RequestLog
from .pricing import cost_micros, prompt_tokens_estimate, reservation_micros, usage_estimate
from .providers.base import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    ProviderError,
    StreamEvent,
    Usage,
)
from .providers.registry import provider_adapter
from .selectors import acatalog_resolve

# A hold outlives the longest call we allow; the sweeper frees it if this process dies.
RESERVATION_TTL = timedelta(minutes=15)
# nginx's "client closed request": logged when the caller went away before the call finished.
CLIENT_CLOSED_STATUS = 499
CALL_ABORTED = ApplicationError("The call did not complete.", code="call_aborted")


@dataclass(frozen=True)
class ChatInput:
    """A validated chat request in our own terms, whatever API format it arrived in."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    stream: bool = False
    user: str | None = None


@dataclass(frozen=True)
class ChatOutcome:
    request_id: str
    model: CatalogModel
    result: ChatResult
    cost_micros: int
    latency_ms: int
    upstream_ms: int
    route: dict[str, Any] = field(default_factory=dict)
    limits: LimitsSnapshot | None = None  # for the x-ratelimit-* headers
    byok: bool = False  # the customer's own key: cost_micros is what it would have cost

    @property
    def charged_micros(self) -> int:
        return 0 if self.byok else self.cost_micros

    @property
    def overhead_ms(self) -> int:
        return max(self.latency_ms - self.upstream_ms, 0)


def _elapsed_ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


async def resolve_model(*, api_key: ApiKey, model_id: str) -> CatalogModel:
    """The enabled catalog model for ``model_id`` that this key may use (404 / 403 otherwise)."""
    model = await acatalog_resolve(model_id=model_id)
    if model is None:
        raise NotFound(
            f"The model {model_id!r} does not exist. GET /v1/models lists the models.",
            code="model_not_found",
            param="model",
        )
    if api_key.allowed_models and model.id not in api_key.allowed_models:
        raise NotPermitted(
            f"This API key may not use {model.id!r}.", code="model_not_allowed", param="model"
        )
    return model


def _reserve(*, api_key: ApiKey, amount_micros: int, request_id: str) -> Reservation:
    """Hold the worst case; raises the wallet's InsufficientCredit (402) when short."""
    return wallet.wallet_reserve(
        wallet=wallet.wallet_for_org(org=api_key.organization),
        amount_micros=amount_micros,
        request_id=request_id,
        expires_in=RESERVATION_TTL,
    )


def _log(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    request_id: str,
    endpoint: str,
    model: CatalogModel,
    http_status: int,
    started: float,
    upstream_ms: int,
    result: ChatResult | None = None,
    cost: int = 0,
    error: ApplicationError | None = None,
    byok: bool = False,
) -> RequestLog:
    usage = result.usage if result is not None else Usage(0, 0)
    keep_text = api_key.retains_text  # the key's setting, else the organization's
    return RequestLog.objects.create(
        organization_id=api_key.organization_id,
        api_key=api_key,
        request_id=request_id,
        endpoint=endpoint,
        requested_model=chat.model,
        model=model.id,
        provider=model.provider,
        status=RequestLog.Status.OK if error is None else RequestLog.Status.ERROR,
        http_status=http_status,
        error_type=error.error_type if error is not None else "",
        error_code=error.code if error is not None else "",
        finish_reason=result.finish_reason if result is not None else "",
        stream=chat.stream,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        usage_estimated=usage.estimated,
        cost_micros=cost,
        byok=byok,
        latency_ms=_elapsed_ms(started),
        upstream_ms=upstream_ms,
        route={"requested": chat.model, "chosen": model.id, "reason": "requested"},
        prompt=[{"role": m.role, "content": m.content} for m in chat.messages]
        if keep_text
        else None,
        completion=result.text if result is not None and keep_text else "",
        created_at=timezone.now(),
    )


def _settle(*, reservation: Reservation | None, cost: int, usage: Usage, **log: Any) -> None:
    """Charge and log in one transaction: the log row exists exactly when the money moved.

    ``reservation`` is None for a BYOK call: nothing is charged, the cost is logged as would-be.
    """
    with transaction.atomic():
        if reservation is None:
            _log(cost=cost, **log)
            return
        wallet.reservation_settle(
            reservation=reservation,
            actual_micros=cost,
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "estimated": usage.estimated,
            },
        )
        _log(cost=cost, **log)


def _release(*, reservation: Reservation | None, **log: Any) -> None:
    with transaction.atomic():
        if reservation is not None:
            wallet.reservation_release(reservation=reservation)
        _log(**log)


def _after_response(write: Any, **kwargs: Any) -> None:
    """Run a settle/release that happens after the response ended (a finished or abandoned
    stream), then close the thread's connection: no request cycle will close it for us."""
    try:
        write(**kwargs)
    finally:
        close_old_connections()


@dataclass
class _Prepared:
    """What both call shapes share once the request is accepted and credit is held."""

    model: CatalogModel
    reservation: Reservation | None  # None: BYOK, nothing held
    credential: Credential
    upstream: ChatRequest
    log: dict[str, Any]
    admission: Admission


async def _prepare(
    *, api_key: ApiKey, chat: ChatInput, request_id: str, endpoint: str, started: float
) -> _Prepared:
    model = await resolve_model(api_key=api_key, model_id=chat.model)
    max_tokens = chat.max_tokens if chat.max_tokens is not None else model.default_max_tokens
    if max_tokens > model.max_output_tokens:
        raise ApplicationError(
            f"max_tokens may be at most {model.max_output_tokens} for {model.id}.",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    prompt_tokens = prompt_tokens_estimate(messages=chat.messages)
    admission = await limits_admit(
        api_key=api_key, prompt_tokens=prompt_tokens, max_tokens=max_tokens, model=model
    )
    try:
        credential = await credential_for(org=api_key.organization, provider=model.provider)
        reservation = None
        if not credential.byok:
            hold = reservation_micros(
                model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens
            )
            reservation = await sync_to_async(_reserve)(
                api_key=api_key, amount_micros=hold, request_id=request_id
            )
    except BaseException:
        # Refused after admission (no credit, no provider key): give back the limit holds.
        await asyncio.shield(limits_release(api_key=api_key, admission=admission))
        raise
    upstream = ChatRequest(
        upstream_model=model.upstream_name,
        messages=chat.messages,
        max_tokens=max_tokens,
        temperature=chat.temperature,
        top_p=chat.top_p,
        stop=chat.stop,
        stream=chat.stream,
        user=chat.user,
    )
    log: dict[str, Any] = {
        "api_key": api_key,
        "chat": chat,
        "request_id": request_id,
        "endpoint": endpoint,
        "model": model,
        "started": started,
        "byok": credential.byok,
    }
    return _Prepared(
        model=model,
        reservation=reservation,
        credential=credential,
        upstream=upstream,
        log=log,
        admission=admission,
    )


def _route(chat: ChatInput, model: CatalogModel) -> dict[str, Any]:
    return {"requested": chat.model, "chosen": model.id, "reason": "requested"}


async def chat_call(
    *, api_key: ApiKey, chat: ChatInput, request_id: str, endpoint: str
) -> ChatOutcome:
    """Run one non-streaming chat call, billed to the key's organization."""
    started = time.perf_counter()
    prepared = await _prepare(
        api_key=api_key, chat=chat, request_id=request_id, endpoint=endpoint, started=started
    )
    model, reservation, log = prepared.model, prepared.reservation, prepared.log
    upstream_started = time.perf_counter()
    try:
        result = await provider_adapter(model.provider, byok=prepared.credential.byok).complete(
            prepared.upstream, api_key=prepared.credential.secret
        )
    except ProviderError as exc:
        # With the customer's own key, a refused key or an empty quota is theirs to fix.
        error = exc.as_byok() if prepared.credential.byok else exc
        await sync_to_async(_release)(
            reservation=reservation,
            http_status=error.status,
            upstream_ms=_elapsed_ms(upstream_started),
            error=error,
            **log,
        )
        await limits_release(api_key=api_key, admission=prepared.admission)
        if error is not exc:
            raise error from exc
        raise
    except BaseException:
        # Cancelled (client went away) or a bug: nothing usable came back, free the hold.
        await asyncio.shield(
            sync_to_async(_release)(
                reservation=reservation,
                http_status=CLIENT_CLOSED_STATUS,
                upstream_ms=_elapsed_ms(upstream_started),
                error=CALL_ABORTED,
                **log,
            )
        )
        raise
    upstream_ms = _elapsed_ms(upstream_started)
    cost = cost_micros(model=model, usage=result.usage)
    await sync_to_async(_settle)(
        reservation=reservation,
        cost=cost,
        usage=result.usage,
        http_status=200,
        upstream_ms=upstream_ms,
        result=result,
        **log,
    )
    await limits_record(
        api_key=api_key, usage=result.usage, cost_micros=cost, admission=prepared.admission
    )
    return ChatOutcome(
        request_id=request_id,
        model=model,
        result=result,
        cost_micros=cost,
        latency_ms=_elapsed_ms(started),
        upstream_ms=upstream_ms,
        route=_route(chat, model),
        limits=prepared.admission.snapshot,
        byok=prepared.credential.byok,
    )


@dataclass
class ChatStream:
    """An accepted streaming call: ``model`` is known and credit is held; iterate ``events``.

    However the iteration ends — the final event, an upstream error, or the client going away
    (the generator is closed or cancelled) — the call is settled for the text that was streamed
    (provider-reported usage when there is one, an estimate marked as such otherwise) and logged.
    """

    request_id: str
    model: CatalogModel
    events: AsyncIterator[StreamEvent]
    route: dict[str, Any]
    outcome: dict[str, Any] = field(default_factory=dict)  # cost_micros, usage once settled
    limits: LimitsSnapshot | None = None  # for the x-ratelimit-* headers
    byok: bool = False


async def chat_stream(
    *, api_key: ApiKey, chat: ChatInput, request_id: str, endpoint: str
) -> ChatStream:
    """Accept a streaming call (errors before the stream raise here, as for :func:`chat_call`)."""
    started = time.perf_counter()
    prepared = await _prepare(
        api_key=api_key, chat=chat, request_id=request_id, endpoint=endpoint, started=started
    )
    outcome: dict[str, Any] = {}
    return ChatStream(
        request_id=request_id,
        model=prepared.model,
        events=_stream_events(prepared, chat, outcome),
        route=_route(chat, prepared.model),
        outcome=outcome,
        limits=prepared.admission.snapshot,
        byok=prepared.credential.byok,
    )


async def _stream_events(
    prepared: _Prepared, chat: ChatInput, outcome: dict[str, Any]
) -> AsyncIterator[StreamEvent]:
    model, reservation, log = prepared.model, prepared.reservation, prepared.log
    texts: list[str] = []
    finish_reason = ""
    usage: Usage | None = None
    error: ApplicationError | None = None
    upstream_started = time.perf_counter()
    try:
        upstream = cast(
            AsyncGenerator[StreamEvent, None],
            provider_adapter(model.provider, byok=prepared.credential.byok).stream(
                prepared.upstream, api_key=prepared.credential.secret
            ),
        )
        async with aclosing(upstream) as events:
            async for event in events:
                if event.text:
                    texts.append(event.text)
                if event.finish_reason is not None:
                    finish_reason = event.finish_reason
                    usage = event.usage
                yield event
    except ProviderError as exc:
        error = exc.as_byok() if prepared.credential.byok else exc
        if error is not exc:
            raise error from exc
        raise
    except BaseException:
        error = CALL_ABORTED
        raise
    finally:
        streamed = "".join(texts)
        if usage is None and (streamed or error is None):
            usage = usage_estimate(messages=chat.messages, completion_text=streamed)
        settle: dict[str, Any] = {
            "reservation": reservation,
            "upstream_ms": _elapsed_ms(upstream_started),
            "error": error,
            **log,
        }
        if error is None:
            settle["http_status"] = 200
        elif error is CALL_ABORTED:
            settle["http_status"] = CLIENT_CLOSED_STATUS
        else:
            settle["http_status"] = error.status_code
        if usage is None:  # failed before any text: the call never happened for the customer
            await asyncio.shield(sync_to_async(_after_response)(_release, **settle))
            await limits_release(api_key=log["api_key"], admission=prepared.admission)
        else:
            cost = cost_micros(model=model, usage=usage)
            result = ChatResult(
                text=streamed,
                finish_reason=finish_reason or ("error" if error is not None else "stop"),
                usage=usage,
                provider_request_id=None,
                upstream_model=model.upstream_name,
            )
            await asyncio.shield(
                sync_to_async(_after_response)(
                    _settle, cost=cost, usage=usage, result=result, **settle
                )
            )
            outcome.update(cost_micros=cost, usage=usage)
            await limits_record(
                api_key=log["api_key"], usage=usage, cost_micros=cost, admission=prepared.admission
            )
