"""The call service: one chat request, from catalog lookup to settled money and a log row.

    resolve the chain → check the key → reserve (one transaction) → call the provider(s)
    → settle + log (one transaction)

A request names one model, optionally followed by fallbacks (``ChatInput.fallbacks``) or
``mesh`` (the default alternatives of its tier): :mod:`.routing.mesh` walks that chain, skipping
models whose circuit breaker is open and moving on after retryable failures, before any byte of
the answer went out. Money: **one reservation per request**, sized for the most expensive
platform-billed member of the chain, **settled once** for the attempt that answered; failed
attempts produced nothing and cost nothing. Every attempt is in ``route.attempts``.

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

from .credentials import credential_for
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
from .routing import health
from .routing.mesh import ChainRun, Member, mesh_alternatives
from .selectors import acatalog_resolve

# A hold outlives the longest call we allow; the sweeper frees it if this process dies.
RESERVATION_TTL = timedelta(minutes=15)
# nginx's "client closed request": logged when the caller went away before the call finished.
CLIENT_CLOSED_STATUS = 499
CALL_ABORTED = ApplicationError("The call did not complete.", code="call_aborted")


@dataclass(frozen=True)
class ChatInput:
    """A validated chat request in our own terms, whatever API format it arrived in.

    ``fallbacks`` are tried in order after ``model`` on retryable failures; ``mesh`` without
    fallbacks asks for the default alternatives of the model's tier.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    stream: bool = False
    user: str | None = None
    fallbacks: tuple[str, ...] = ()
    mesh: bool = False


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


async def resolve_model(*, api_key: ApiKey, model_id: str, param: str = "model") -> CatalogModel:
    """The enabled catalog model for ``model_id`` that this key may use (404 / 403 otherwise)."""
    model = await acatalog_resolve(model_id=model_id)
    if model is None:
        raise NotFound(
            f"The model {model_id!r} does not exist. GET /v1/models lists the models.",
            code="model_not_found",
            param=param,
        )
    if api_key.allowed_models and model.id not in api_key.allowed_models:
        raise NotPermitted(
            f"This API key may not use {model.id!r}.", code="model_not_allowed", param=param
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
    route: dict[str, Any],
    result: ChatResult | None = None,
    cost: int = 0,
    error: ApplicationError | None = None,
    byok: bool = False,
    parent_request_id: str = "",
) -> RequestLog:
    usage = result.usage if result is not None else Usage(0, 0)
    keep_text = api_key.retains_text  # the key's setting, else the organization's
    return RequestLog.objects.create(
        organization_id=api_key.organization_id,
        api_key=api_key,
        request_id=request_id,
        parent_request_id=parent_request_id,
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
        route=route,
        prompt=[{"role": m.role, "content": m.content} for m in chat.messages]
        if keep_text
        else None,
        completion=result.text if result is not None and keep_text else "",
        created_at=timezone.now(),
    )


def _settle(*, reservation: Reservation | None, cost: int, usage: Usage, **log: Any) -> None:
    """Charge and log in one transaction: the log row exists exactly when the money moved.

    A BYOK answer (``log["byok"]``) charges nothing: the hold, if the chain had platform-billed
    members and so made one, is released and the cost is logged as would-be.
    """
    with transaction.atomic():
        if reservation is not None and log.get("byok"):
            wallet.reservation_release(reservation=reservation)
        elif reservation is not None:
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

    chain: list[Member]
    reservation: Reservation | None  # None: nothing held (every member is BYOK)
    log: dict[str, Any]  # _log's arguments that do not depend on the answering member
    admission: Admission

    @property
    def primary(self) -> Member:
        return self.chain[0]

    def log_for(self, run: ChainRun, chat: ChatInput, *, answered: bool) -> dict[str, Any]:
        """_log's arguments once the walk ended: the answering member, else the last tried."""
        member = run.last or self.primary
        return {
            **self.log,
            "model": member.model,
            "byok": member.byok,
            "upstream_ms": run.upstream_ms,
            "route": run.route(requested=chat.model, chosen=member.model if answered else None),
        }


async def _chain_models(*, api_key: ApiKey, chat: ChatInput) -> list[CatalogModel]:
    """The requested model and its fallbacks, resolved and checked, duplicates dropped."""
    primary = await resolve_model(api_key=api_key, model_id=chat.model)
    models = [primary]
    if chat.fallbacks:
        for index, model_id in enumerate(chat.fallbacks):
            model = await resolve_model(
                api_key=api_key, model_id=model_id, param=f"fallbacks.{index}"
            )
            if all(model.id != m.id for m in models):
                models.append(model)
    elif chat.mesh:
        models += await mesh_alternatives(
            model=primary, api_key=api_key, max_tokens=chat.max_tokens
        )
    for index, model in enumerate(models):
        max_tokens = chat.max_tokens if chat.max_tokens is not None else model.default_max_tokens
        if max_tokens > model.max_output_tokens:
            raise ApplicationError(
                f"max_tokens may be at most {model.max_output_tokens} for {model.id}"
                + (" (a fallback of this request)." if index else "."),
                code="max_tokens_too_large",
                param="max_tokens",
            )
    return models


def _upstream(chat: ChatInput, model: CatalogModel) -> ChatRequest:
    return ChatRequest(
        upstream_model=model.upstream_name,
        messages=chat.messages,
        max_tokens=chat.max_tokens if chat.max_tokens is not None else model.default_max_tokens,
        temperature=chat.temperature,
        top_p=chat.top_p,
        stop=chat.stop,
        stream=chat.stream,
        user=chat.user,
    )


async def hold_estimate(*, api_key: ApiKey, chat: ChatInput) -> int:
    """What :func:`chat_call` would hold for ``chat`` (0 when every member is BYOK), without
    holding anything: a fan-out (orchestration) reserves the sum of these up front."""
    models = await _chain_models(api_key=api_key, chat=chat)
    prompt_tokens = prompt_tokens_estimate(messages=chat.messages)
    billed = []
    for model in models:
        credential = await credential_for(org=api_key.organization, provider=model.provider)
        if not credential.byok:
            upstream = _upstream(chat, model)
            billed.append(
                reservation_micros(
                    model=model, prompt_tokens=prompt_tokens, max_tokens=upstream.max_tokens
                )
            )
    return max(billed, default=0)


def _split(*, parent_hold: Reservation, amount_micros: int, request_id: str) -> Reservation:
    return wallet.reservation_split(
        parent=parent_hold, request_id=request_id, amount_micros=amount_micros
    )


async def _prepare(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    request_id: str,
    endpoint: str,
    started: float,
    parent_hold: Reservation | None = None,
    parent_request_id: str = "",
) -> _Prepared:
    models = await _chain_models(api_key=api_key, chat=chat)
    prompt_tokens = prompt_tokens_estimate(messages=chat.messages)
    upstreams = [_upstream(chat, model) for model in models]

    def worst(index: int) -> int:
        return reservation_micros(
            model=models[index], prompt_tokens=prompt_tokens, max_tokens=upstreams[index].max_tokens
        )

    # Limits hold the worst case of the chain: whichever member answers, it fits.
    costliest = max(range(len(models)), key=worst)
    admission = await limits_admit(
        api_key=api_key,
        prompt_tokens=prompt_tokens,
        max_tokens=max(u.max_tokens or 0 for u in upstreams),
        model=models[costliest],
    )
    try:
        credentials = {}
        for provider in dict.fromkeys(m.provider for m in models):
            credentials[provider] = await credential_for(
                org=api_key.organization, provider=provider
            )
        chain = [
            Member(model=m, credential=credentials[m.provider], upstream=u)
            for m, u in zip(models, upstreams, strict=True)
        ]
        # One hold per request, covering the costliest member we would pay for: BYOK members
        # cost the wallet nothing, so a chain of them holds nothing at all.
        billed = [worst(i) for i, member in enumerate(chain) if not member.byok]
        reservation = None
        if billed and parent_hold is not None:
            # Part of a fan-out: carve this call's hold out of the fan-out's single reservation.
            reservation = await sync_to_async(_split)(
                parent_hold=parent_hold, amount_micros=max(billed), request_id=request_id
            )
        elif billed:
            reservation = await sync_to_async(_reserve)(
                api_key=api_key, amount_micros=max(billed), request_id=request_id
            )
    except BaseException:
        # Refused after admission (no credit, no provider key): give back the limit holds.
        await asyncio.shield(limits_release(api_key=api_key, admission=admission))
        raise
    log: dict[str, Any] = {
        "api_key": api_key,
        "chat": chat,
        "request_id": request_id,
        "endpoint": endpoint,
        "started": started,
        "parent_request_id": parent_request_id,
    }
    return _Prepared(chain=chain, reservation=reservation, log=log, admission=admission)


async def _complete(member: Member) -> ChatResult:
    adapter = provider_adapter(member.model.provider, byok=member.byok)
    return await adapter.complete(member.upstream, api_key=member.credential.secret)


async def chat_call(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    request_id: str,
    endpoint: str,
    parent_hold: Reservation | None = None,
    parent_request_id: str = "",
) -> ChatOutcome:
    """Run one non-streaming chat call (failing over along its chain), billed to the key's
    organization for the attempt that answered. ``parent_hold``: a fan-out's reservation to
    carve this call's hold from, instead of reserving on its own."""
    started = time.perf_counter()
    prepared = await _prepare(
        api_key=api_key,
        chat=chat,
        request_id=request_id,
        endpoint=endpoint,
        started=started,
        parent_hold=parent_hold,
        parent_request_id=parent_request_id,
    )
    reservation = prepared.reservation
    run = ChainRun(prepared.chain)
    try:
        member, result = await run.until_answer(_complete)
    except ApplicationError as exc:
        await sync_to_async(_release)(
            reservation=reservation,
            http_status=exc.status_code,
            error=exc,
            **prepared.log_for(run, chat, answered=False),
        )
        await limits_release(api_key=api_key, admission=prepared.admission)
        raise
    except BaseException:
        # Cancelled (client went away) or a bug: nothing usable came back, free the hold.
        await asyncio.shield(
            sync_to_async(_release)(
                reservation=reservation,
                http_status=CLIENT_CLOSED_STATUS,
                error=CALL_ABORTED,
                **prepared.log_for(run, chat, answered=False),
            )
        )
        raise
    latency = _elapsed_ms(run.answered_at)
    run.answered(member, latency)
    assert run.gate is not None  # noqa: S101 - set by the answering attempt
    await health.attempt_record(run.gate, error=None, latency_ms=latency, byok=member.byok)
    model = member.model
    cost = cost_micros(model=model, usage=result.usage)
    log = prepared.log_for(run, chat, answered=True)
    await sync_to_async(_settle)(
        reservation=reservation,
        cost=cost,
        usage=result.usage,
        http_status=200,
        result=result,
        **log,
    )
    await limits_record(
        api_key=api_key,
        usage=result.usage,
        cost_micros=cost,
        admission=prepared.admission,
    )
    return ChatOutcome(
        request_id=request_id,
        model=model,
        result=result,
        cost_micros=cost,
        latency_ms=_elapsed_ms(started),
        upstream_ms=run.upstream_ms,
        route=log["route"],
        limits=prepared.admission.snapshot,
        byok=member.byok,
    )


@dataclass
class ChatStream:
    """An accepted streaming call: credit is held; iterate ``events``.

    ``model``, ``byok`` and ``route`` describe the requested model until the first event has been
    pulled; from then on the member of the chain that answers (failover happens before it).
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
    *,
    api_key: ApiKey,
    chat: ChatInput,
    request_id: str,
    endpoint: str,
    parent_hold: Reservation | None = None,
    parent_request_id: str = "",
) -> ChatStream:
    """Accept a streaming call (errors before the stream raise here, as for :func:`chat_call`;
    upstream failures before the first event raise from the first ``anext`` of ``events``)."""
    started = time.perf_counter()
    prepared = await _prepare(
        api_key=api_key,
        chat=chat,
        request_id=request_id,
        endpoint=endpoint,
        started=started,
        parent_hold=parent_hold,
        parent_request_id=parent_request_id,
    )
    primary = prepared.primary
    stream = ChatStream(
        request_id=request_id,
        model=primary.model,
        # Set just below: the generator updates the stream it belongs to.
        events=cast(AsyncIterator[StreamEvent], None),
        route={"requested": chat.model, "chosen": primary.model.id, "reason": "requested"},
        limits=prepared.admission.snapshot,
        byok=primary.byok,
    )
    stream.events = _stream_events(stream, prepared, chat)
    return stream


async def _stream_open(member: Member) -> tuple[AsyncGenerator[StreamEvent, None], StreamEvent]:
    """Start one member's stream and wait for its first event: the point of no return."""
    adapter = provider_adapter(member.model.provider, byok=member.byok)
    upstream = cast(
        AsyncGenerator[StreamEvent, None],
        adapter.stream(member.upstream, api_key=member.credential.secret),
    )
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        # Adapters end every stream with a final event or an error; an empty one is broken.
        await upstream.aclose()
        raise ProviderError(
            f"{member.model.provider} ended the stream without any event.",
            provider=member.model.provider,
            status=502,
            error_type="upstream_error",
            code="upstream_invalid_response",
            retryable=True,
        ) from None
    except BaseException:
        await upstream.aclose()
        raise
    return upstream, first


async def _stream_events(
    stream: ChatStream, prepared: _Prepared, chat: ChatInput
) -> AsyncIterator[StreamEvent]:
    reservation, outcome = prepared.reservation, stream.outcome
    run = ChainRun(prepared.chain)
    texts: list[str] = []
    finish_reason = ""
    usage: Usage | None = None
    error: ApplicationError | None = None
    member: Member | None = None
    try:
        member, (upstream, first) = await run.until_answer(_stream_open)
        latency = _elapsed_ms(run.answered_at)
        run.answered(member, latency)
        assert run.gate is not None  # noqa: S101 - set by the answering attempt
        # In the background: the first byte to the client must not wait for the counters.
        health.attempt_record_later(run.gate, error=None, latency_ms=latency, byok=member.byok)
        stream.model, stream.byok = member.model, member.byok
        stream.route.clear()
        stream.route.update(run.route(requested=chat.model, chosen=member.model))
        async with aclosing(upstream) as events:
            event: StreamEvent | None = first
            while event is not None:
                if event.text:
                    texts.append(event.text)
                if event.finish_reason is not None:
                    finish_reason = event.finish_reason
                    usage = event.usage
                yield event
                event = await anext(events, None)
    except ProviderError as exc:
        # After the first event (mid-stream): no failover, the answer already started.
        error = exc.as_byok() if member is not None and member.byok else exc
        if error is not exc:
            raise error from exc
        raise
    except ApplicationError as exc:  # every member failed (or a non-retryable first error)
        error = exc
        raise
    except BaseException:
        error = CALL_ABORTED
        raise
    finally:
        streamed = "".join(texts)
        if member is not None and usage is None and (streamed or error is None):
            usage = usage_estimate(messages=chat.messages, completion_text=streamed)
        settle: dict[str, Any] = {
            "reservation": reservation,
            "error": error,
            **prepared.log_for(run, chat, answered=member is not None),
        }
        if error is None:
            settle["http_status"] = 200
        elif error is CALL_ABORTED:
            settle["http_status"] = CLIENT_CLOSED_STATUS
        else:
            settle["http_status"] = error.status_code
        api_key = prepared.log["api_key"]
        if usage is None or member is None:  # failed before any text: nothing happened
            await asyncio.shield(sync_to_async(_after_response)(_release, **settle))
            await limits_release(api_key=api_key, admission=prepared.admission)
        else:
            model = member.model
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
                api_key=api_key,
                usage=usage,
                cost_micros=cost,
                admission=prepared.admission,
            )
