"""The call service: one chat request, from catalog lookup to settled money and a log row.

    resolve the chain → check the key → reserve (one transaction) → call the provider(s)
    → settle + log (one transaction)

A request names one model, optionally followed by fallbacks (``ChatInput.fallbacks``) or
``mesh`` (the default alternatives of its tier): :mod:`.routing.mesh` walks that chain, skipping
models whose circuit breaker is open and moving on after retryable failures, before any byte of
the answer went out. Money: **one reservation per request**, sized for the most expensive
platform-billed member of the chain, **settled once** for the attempt that answered; failed
attempts produced nothing and cost nothing. Every attempt is in ``route.attempts``.

Which chain a request gets is decided by :func:`_route` (see docs/routing.md "How a request is
routed"): the routing policy it runs under (named in the body, pinned to the key, or the org's
default), else ``model: "auto"`` (classifier + auto-router), else the model it names with its
fallbacks. Every request is classified so its log row carries a task category; when the
classification decides nothing (a named model, no policy) only once the log or route needs it.

Every path out of :func:`chat_call` after the reservation — success, provider error, a bug, or a
cancelled client — settles or releases the hold and writes the request log, so no reservation is
left for the sweeper except after a crash of the whole process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Field
from django.utils import timezone
from psycopg import InterfaceError as PsycopgInterfaceError
from psycopg import OperationalError as PsycopgOperationalError
from psycopg.errors import UniqueViolation

from apps.accounts.models import ApiKey
from apps.wallet import hotpath
from apps.wallet import services as wallet
from apps.wallet.models import MICROS_PER_USD, Reservation
from llmwise import adb, metrics
from llmwise.errors import ApplicationError, NotFound, NotPermitted
from llmwise.http import after_answer, run_db

from .credentials import byok_providers_of, credential_for
from .limits import (
    Admission,
    LimitsSnapshot,
    limits_admit,
    limits_record,
    limits_release,
    limits_roomy,
)
from .models import CatalogModel, ModelAlias, OrgGatewaySettings, RequestLog
from .policy_selectors import SelectedPolicy, apolicy_for_cached
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
from .response_cache import (
    HIT,
    MISS,
    CachedAnswer,
    cache_allowed,
    cache_settings_of,
    response_cache_get,
    response_cache_key,
    response_cache_put,
)
from .routing import health
from .routing.auto import AUTO_MODEL, AutoDecision, auto_choose
from .routing.classifier import Classification, classify
from .routing.mesh import STATUS_ERROR, Attempt, ChainRun, Member, mesh_alternatives
from .routing.policies import AppliesTo, ExcludedModel, PolicyCatalog, policy_route
from .selectors import acatalog_enabled_cached, acatalog_resolve

logger = logging.getLogger(__name__)


def _reservation_ttl() -> timedelta:
    """A hold outlives the longest call we allow; the sweeper frees it if this process dies."""
    return timedelta(seconds=settings.GATEWAY_RESERVATION_TTL_SECONDS)


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
    policy: str | None = None  # a routing policy of the org, by name (else the key's / default)


class NoModelWithinPolicy(ApplicationError):
    """The routing policy excluded every model the request could use (its price cap, its
    allowed providers). A 400, not a 402: more credit would not help, a smaller ``max_tokens``,
    another model or a policy change would."""

    code = "no_model_within_policy"


class LatencyBudgetExceeded(ApplicationError):
    """The policy's ``latency_budget_ms`` ran out before any member of the chain answered."""

    status_code: int = 504
    error_type = "upstream_error"
    code = "latency_budget_exceeded"


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
    cache: str | None = None  # "hit" / "miss" when the org's response cache was consulted

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
    return hotpath.reserve(
        org=api_key.organization,
        amount_micros=amount_micros,
        request_id=request_id,
        expires_in=_reservation_ttl(),
    )


def _log_row(
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
    category: str = "",
    cache_hit: bool = False,
    ttft_ms: int | None = None,
    latency_ms: int | None = None,
) -> RequestLog:
    """The request-log row of a call, not saved yet (``latency_ms``: by default until now)."""
    usage = result.usage if result is not None else Usage(0, 0)
    keep_text = api_key.retains_text  # the key's setting, else the organization's
    if not keep_text and "signals" in route:
        # The classifier's cue names are words of the prompt: zero retention keeps only labels.
        route = {name: value for name, value in route.items() if name != "signals"}
    return RequestLog(
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
        latency_ms=_elapsed_ms(started) if latency_ms is None else latency_ms,
        upstream_ms=upstream_ms,
        ttft_ms=ttft_ms,
        route=route,
        category=category,
        cache_hit=cache_hit,
        prompt=[{"role": m.role, "content": m.content} for m in chat.messages]
        if keep_text
        else None,
        # An upstream answer may carry NUL, which PostgreSQL text cannot store.
        completion=result.text.replace("\x00", "\ufffd")
        if result is not None and keep_text
        else "",
        created_at=timezone.now(),
    )


@metrics.logs_requests
def _log(**fields: Any) -> RequestLog:
    return _insert(_log_row(**fields))


@functools.cache
def _log_table() -> tuple[str, tuple[Field[Any, Any], ...]]:
    """``gateway_requestlog (every column but the id)`` and those columns' fields."""
    meta = RequestLog._meta
    pk = meta.pk
    assert pk is not None  # noqa: S101 - every concrete model has one
    fields = tuple(f for f in meta.concrete_fields if f is not pk)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(cast(str, f.column)) for f in fields)
    return f"{quote(meta.db_table)} ({columns})", fields


def _log_values(row: RequestLog) -> list[Any]:
    return [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in _log_table()[1]]


def _saved(row: RequestLog, pk: int) -> RequestLog:
    row.pk = pk
    row._state.adding = False
    row._state.db = DEFAULT_DB_ALIAS  # not connection.alias: see hotpath._held
    return row


def _insert(row: RequestLog) -> RequestLog:
    """Save a new log row with one INSERT on PostgreSQL (for this one statement the ORM's
    save() spent more CPU building the SQL than the database running it), else save()."""
    if connection.vendor != "postgresql":
        row.save(force_insert=True)
        return row
    target, fields = _log_table()
    values = _log_values(row)
    # Names from the model's own metadata, values as parameters: nothing from a request.
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {target} VALUES ({placeholders}) RETURNING id"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        (pk,) = cursor.fetchone()
    return _saved(row, pk)


def _usage_record(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "estimated": usage.estimated,
    }


def _settle(*, reservation: Reservation | None, cost: int, usage: Usage, **log: Any) -> None:
    """Charge and log in one transaction: the log row exists exactly when the money moved.

    A BYOK answer (``log["byok"]``) charges nothing: the hold, if the chain had platform-billed
    members and so made one, is released and the cost is logged as would-be.
    """
    with transaction.atomic():
        # The log row first: the wallet row, which every call of the organization updates, is
        # then locked only from the settle to the commit.
        _log(cost=cost, **log)
        if reservation is not None and log.get("byok"):
            wallet.reservation_release(reservation=reservation)
        elif reservation is not None:
            hotpath.settle(reservation=reservation, actual_micros=cost, usage=_usage_record(usage))


def _settle_durably(**kwargs: Any) -> None:
    """:func:`_settle`, retried while the database is unreachable (a restart, a failover) for up
    to ``GATEWAY_SETTLE_RETRY_SECONDS``: the provider has answered, so the charge is real money
    and worth waiting a few seconds for. Only then is the call given up unbilled (its hold is
    swept later). Runs on a database thread, never on the event loop."""
    deadline = time.monotonic() + settings.GATEWAY_SETTLE_RETRY_SECONDS
    pause = 0.1
    while True:
        try:
            _settle(**kwargs)
            return
        except IntegrityError:
            # An earlier attempt committed but its answer was lost with the connection: the log
            # row (unique request id, written in the same transaction as the charge) is there.
            if RequestLog.objects.filter(request_id=kwargs["request_id"]).exists():
                return
            raise
        except (OperationalError, InterfaceError):
            connection.close()  # a broken connection: the next attempt opens a new one
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


async def _settle_answered(*, after_response: bool, **kwargs: Any) -> None:
    """Charge and log an answered call (see :func:`_settle`).

    From the event loop in one statement when it can (:mod:`llmwise.adb`: on the server's loop,
    on PostgreSQL, a platform-billed call), else :func:`_settle_durably` on a database thread
    (``after_response``: the response is over, so that thread's connection is closed after)."""
    if kwargs["reservation"] is None or kwargs.get("byok") or not adb.active():
        if after_response:
            await run_db(_after_response, write=_settle_durably, **kwargs)
        else:
            await run_db(_settle_durably, **kwargs)
        return
    await _asettle_durably(**kwargs)


async def _asettle_durably(
    *, reservation: Reservation, cost: int, usage: Usage, **log: Any
) -> None:
    """:func:`_settle_durably` from the event loop: settle and log in one statement
    (``hotpath.asettle_with``), retried while the database is unreachable."""
    row = _log_row(cost=cost, **log)
    target = _log_table()[0]
    values = _log_values(row)
    deadline = time.monotonic() + settings.GATEWAY_SETTLE_RETRY_SECONDS
    pause = 0.1
    while True:
        try:
            pk = await adb.run(
                lambda conn: hotpath.asettle_with(
                    conn,
                    reservation=reservation,
                    actual_micros=cost,
                    usage=_usage_record(usage),
                    insert=(target, values),
                )
            )
            break
        except UniqueViolation:
            # An earlier attempt committed but its answer was lost with the connection.
            if await adb.run(lambda conn: _logged(conn, row.request_id)):
                return
            raise
        except (PsycopgOperationalError, PsycopgInterfaceError):
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
    metrics.request_logged(_saved(row, pk))


async def _hold_or_give_back(
    *, api_key: ApiKey, amount_micros: int, request_id: str
) -> Reservation:
    """:func:`_hold`, finished even when the caller is cancelled while it is written."""
    return await _landed(
        asyncio.ensure_future(
            _hold(api_key=api_key, amount_micros=amount_micros, request_id=request_id)
        )
    )


async def _admit_while_holding(
    admit: Callable[[], Awaitable[Admission]],
    *,
    api_key: ApiKey,
    amount_micros: int,
    request_id: str,
) -> tuple[Admission, Reservation | None]:
    """``admit()`` and the credit hold (when ``amount_micros``) side by side: the admission's
    counters round trip and the hold's database round trip overlap. Whichever refuses, the
    other is given back before the refusal is raised (a refused admission wins, as when they
    run one after the other); a caller that goes away gets both given back all the same."""
    if not amount_micros:
        return await admit(), None
    holding = asyncio.ensure_future(
        _hold(api_key=api_key, amount_micros=amount_micros, request_id=request_id)
    )
    try:
        admission = await admit()
    except BaseException:
        await _given_back(holding, request_id=request_id)
        raise
    try:
        return admission, await _landed(holding)
    except BaseException:
        await asyncio.shield(limits_release(api_key=api_key, admission=admission))
        raise


async def _landed(holding: asyncio.Future[Reservation]) -> Reservation:
    """The hold once written. A caller cancelled meanwhile (its client went away) does not
    wait: a hold that commits after that is released at once, not left to the sweeper for the
    length of its TTL."""
    try:
        return await asyncio.shield(holding)
    except asyncio.CancelledError:
        holding.add_done_callback(_give_back)
        raise


async def _given_back(holding: asyncio.Future[Reservation], *, request_id: str) -> None:
    """Release a hold the call will not use, once it has landed (if it lands at all)."""
    try:
        held = await _landed(holding)
    except Exception:
        return  # nothing was held (short credit as well, say)
    try:
        await asyncio.shield(run_db(wallet.reservation_release, reservation=held))
    except Exception:
        logger.exception("hold of refused call %s left to the sweeper", request_id)


def _give_back(holding: asyncio.Future[Reservation]) -> None:
    if holding.cancelled() or holding.exception() is not None:
        return  # nothing was held
    task = asyncio.ensure_future(
        run_db(_after_response, write=wallet.reservation_release, reservation=holding.result())
    )
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[Any]] = set()  # tasks that must not be collected mid-way


async def _logged(conn: Any, request_id: str) -> bool:
    cursor = await conn.execute(
        "SELECT 1 FROM gateway_requestlog WHERE request_id = %s", [request_id]
    )
    return await cursor.fetchone() is not None


async def _hold(*, api_key: ApiKey, amount_micros: int, request_id: str) -> Reservation:
    """:func:`_reserve`, from the event loop when it can (see :func:`_settle_answered`)."""
    if adb.active():
        held = await adb.run(
            lambda conn: hotpath.areserve(
                conn,
                org_id=api_key.organization_id,
                amount_micros=amount_micros,
                request_id=request_id,
                expires_in=_reservation_ttl(),
            )
        )
        if held is not None:
            return held
    # Not on the server's loop, or a case the fast path leaves to the ORM service (no wallet
    # yet, short credit: the service raises the right error).
    return await run_db(
        _reserve, api_key=api_key, amount_micros=amount_micros, request_id=request_id
    )


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
    routing: _Routing

    @property
    def primary(self) -> Member:
        return self.chain[0]

    def log_for(self, run: ChainRun, chat: ChatInput, *, answered: bool) -> dict[str, Any]:
        """_log's arguments once the walk ended: the answering member, else the last tried."""
        member = run.last or self.primary
        route = run.route(requested=chat.model, chosen=member.model if answered else None)
        return {
            **self.log,
            "model": member.model,
            "byok": member.byok,
            "upstream_ms": run.upstream_ms,
            "route": self.routing.explain(route),
            "category": str(self.routing.classification.category),
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
        chain = await _org_default_chain(api_key.organization_id)
        if chain:  # the organization's own chain (Settings), in its order
            for model_id in chain:
                member = await acatalog_resolve(model_id=model_id)
                if member is None:  # disabled since it was chosen: skip it
                    continue
                allowed = not api_key.allowed_models or member.id in api_key.allowed_models
                if allowed and all(member.id != m.id for m in models):
                    models.append(member)
        else:
            models += await mesh_alternatives(
                model=primary, api_key=api_key, max_tokens=chat.max_tokens
            )
    return models


async def _org_default_chain(org_id: int) -> list[str]:
    row = await OrgGatewaySettings.objects.filter(organization_id=org_id).afirst()
    return list(row.default_chain) if row is not None else []


def _check_max_tokens(models: list[CatalogModel], chat: ChatInput) -> None:
    for index, model in enumerate(models):
        max_tokens = chat.max_tokens if chat.max_tokens is not None else model.default_max_tokens
        if max_tokens > model.max_output_tokens:
            raise ApplicationError(
                f"max_tokens may be at most {model.max_output_tokens} for {model.id}"
                + (" (a fallback of this request)." if index else "."),
                code="max_tokens_too_large",
                param="max_tokens",
            )


# --- routing: which chain a request gets ---------------------------------------------------------
@dataclass
class _Routing:
    """The chain a request will walk and why, decided before anything is reserved.

    ``info`` is what the route explanation adds to the mesh's own (``requested``, ``chosen``,
    ``attempts``, ``chain``): ``reason`` when something other than the request chose the model,
    ``signals``/``tier`` for the auto-router, ``policy``; ``category``/``complexity`` (the
    classification) always. A request that names its model is classified only for its log and
    route, so only when those are written: for a stream, after its first token went out.
    """

    models: list[CatalogModel]
    info: dict[str, Any]
    messages: tuple[ChatMessage, ...]
    deadline_s: float | None = None  # the policy's latency budget, for the walk to an answer
    decided_by: Classification | None = None  # set when the classification chose the chain

    @functools.cached_property
    def classification(self) -> Classification:
        return self.decided_by or classify(self.messages)

    def explain(self, route: dict[str, Any]) -> dict[str, Any]:
        """The mesh's route with the routing decision merged in."""
        reason = self.info.get("reason")
        classification = self.classification
        merged = {
            **route,
            "category": str(classification.category),
            "complexity": str(classification.complexity),
            **{k: v for k, v in self.info.items() if k != "reason"},
        }
        if reason is not None:
            fell_back = route.get("reason") == "fallback"
            merged["reason"] = f"{reason}; answered by a fallback" if fell_back else reason
        return merged


# The policy catalog (enabled models + aliases) rebuilt only when the cached catalog tuple
# changes: one alias query per CATALOG_CACHE_SECONDS instead of two queries per request.
_policy_catalog_cache: tuple[tuple[CatalogModel, ...], PolicyCatalog] | None = None


async def _policy_catalog(models: tuple[CatalogModel, ...]) -> PolicyCatalog:
    global _policy_catalog_cache
    cached = _policy_catalog_cache
    if cached is not None and cached[0] is models:
        return cached[1]
    aliases = {
        alias: model_id
        async for alias, model_id in ModelAlias.objects.filter(model__enabled=True).values_list(
            "alias", "model_id"
        )
    }
    catalog = PolicyCatalog(models={m.id: m for m in models}, aliases=aliases)
    _policy_catalog_cache = (models, catalog)
    return catalog


def _usd(micros: int) -> str:
    return f"${Decimal(micros) / MICROS_PER_USD:f}"  # exact, as policy_route words it


def _worst(model: CatalogModel, chat: ChatInput, prompt_tokens: int) -> int:
    return reservation_micros(model=model, prompt_tokens=prompt_tokens, max_tokens=chat.max_tokens)


def _within_limits(
    models: list[CatalogModel],
    *,
    selected: SelectedPolicy,
    chat: ChatInput,
    prompt_tokens: int,
    excluded: list[ExcludedModel],
) -> list[CatalogModel]:
    """``models`` without those the policy's allowed providers or price cap exclude."""
    policy = selected.effective
    kept = []
    for model in models:
        if policy.allowed_providers is not None and model.provider not in policy.allowed_providers:
            excluded.append(ExcludedModel(model.id, f"{model.provider} is not an allowed provider"))
            continue
        if policy.max_price_micros is not None:
            worst = _worst(model, chat, prompt_tokens)
            if worst > policy.max_price_micros:
                excluded.append(
                    ExcludedModel(
                        model.id,
                        f"may cost up to {_usd(worst)}, over the "
                        f"{_usd(policy.max_price_micros)} per-request maximum",
                    )
                )
                continue
        kept.append(model)
    return kept


def _excluded_all(selected: SelectedPolicy, excluded: list[ExcludedModel]) -> NoModelWithinPolicy:
    listed = "; ".join(f"{e.model}: {e.reason}" for e in excluded) or "no model left"
    return NoModelWithinPolicy(
        f"The routing policy {selected.policy.name!r} excludes every model this request could "
        f"use ({listed}). Lower max_tokens, name another model, or change the policy.",
        param="policy",
    )


async def _auto(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    classification: Classification,
    candidates: list[CatalogModel] | tuple[CatalogModel, ...],
    byok_providers: frozenset[str],
    prompt_tokens: int,
) -> AutoDecision:
    return auto_choose(
        classification=classification,
        candidates=candidates,
        allowed_models=api_key.allowed_models,
        byok_providers=byok_providers,
        prompt_tokens=prompt_tokens,
        max_tokens=chat.max_tokens,
        healthy=health.healthy,
        max_alternatives=max(settings.GATEWAY_MESH_MAX_CHAIN - 1, 0),
    )


def _auto_info(decision: AutoDecision, classification: Classification) -> dict[str, Any]:
    return {
        "reason": decision.reason,
        "tier": str(decision.tier),
        "signals": list(classification.signals),
    }


async def _route(*, api_key: ApiKey, chat: ChatInput, fan_out: bool = False) -> _Routing:
    """The chain for ``chat`` (checked: the key may use every member, each can honour
    ``max_tokens``), in order of precedence:

    1. a routing policy (named by the request, pinned to the key, or the org's default) decides
       the model and fallbacks, or hands over to the auto-router within its limits; a request
       naming a model under an ``applies_to: auto`` policy keeps its own chain, filtered by the
       policy's allowed providers and price cap;
    2. ``model: "auto"``: the auto-router's choice and its same-tier alternatives;
    3. the named model with its ``fallbacks`` (or ``mesh`` alternatives).

    ``fan_out``: a child call of Compare / Blend / Judge. Those name their models on purpose
    (comparing them is the point), so the key's pinned policy and the org's default do not
    reroute them; a policy the request names itself still applies.
    """
    org = api_key.organization
    prompt_tokens = prompt_tokens_estimate(messages=chat.messages)
    info: dict[str, Any] = {}
    selected = None
    if chat.policy or not fan_out:
        selected = await apolicy_for_cached(org=org, api_key=api_key, requested_name=chat.policy)
    deadline_s = None
    classification = None  # classified here only when it decides the chain
    if selected is None:
        if chat.model == AUTO_MODEL:
            classification = classify(chat.messages)
            decision = await _auto(
                api_key=api_key,
                chat=chat,
                classification=classification,
                candidates=await acatalog_enabled_cached(),
                byok_providers=await byok_providers_of(org=org),
                prompt_tokens=prompt_tokens,
            )
            models = [decision.model, *decision.alternatives]
            info.update(_auto_info(decision, classification))
        else:
            models = await _chain_models(api_key=api_key, chat=chat)
    else:
        classification = classify(chat.messages)
        models, deadline_s = await _route_by_policy(
            api_key=api_key,
            chat=chat,
            selected=selected,
            classification=classification,
            prompt_tokens=prompt_tokens,
            info=info,
        )
    _check_max_tokens(models, chat)
    return _Routing(
        models=models,
        info=info,
        messages=chat.messages,
        deadline_s=deadline_s,
        decided_by=classification,
    )


async def _route_by_policy(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    selected: SelectedPolicy,
    classification: Classification,
    prompt_tokens: int,
    info: dict[str, Any],
) -> tuple[list[CatalogModel], float | None]:
    org = api_key.organization
    policy = selected.effective
    enabled = await acatalog_enabled_cached()
    catalog = await _policy_catalog(enabled)
    byok_providers = await byok_providers_of(org=org)
    decision = policy_route(
        policy=policy,
        classification=classification,
        requested_model=chat.model,
        catalog=catalog,
        prompt_tokens=prompt_tokens,
        max_tokens=chat.max_tokens,
        byok_providers=byok_providers,
    )
    excluded = list(decision.excluded)
    described: dict[str, Any] = {
        "name": selected.policy.name,
        "version": selected.version.number,
        "rule_index": decision.rule_index,
        "rule": decision.rule,
        "source": selected.source,
    }
    info["policy"] = described
    reason = f"policy {selected.policy.name!r}: {decision.reason}"
    keeps_request = chat.model != AUTO_MODEL and (
        policy.applies_to == AppliesTo.AUTO
        or (decision.rule_index is None and policy.default is None)
    )
    models: list[CatalogModel]
    if keeps_request:
        # The request's own chain (fallbacks, mesh), under the policy's limits only.
        requested = await _chain_models(api_key=api_key, chat=chat)
        models = _within_limits(
            requested, selected=selected, chat=chat, prompt_tokens=prompt_tokens, excluded=excluded
        )
    elif decision.model == AUTO_MODEL:
        dropped: list[ExcludedModel] = []
        candidates = _within_limits(
            list(enabled),
            selected=selected,
            chat=chat,
            prompt_tokens=prompt_tokens,
            excluded=dropped,
        )
        if not candidates:
            raise _excluded_all(selected, dropped)
        auto = await _auto(
            api_key=api_key,
            chat=chat,
            classification=classification,
            candidates=candidates,
            # Outside prefer_byok the auto-router still puts the org's own keys first: they cost
            # it no credit. Within a tier only, so a cheaper tier is never skipped for BYOK.
            byok_providers=byok_providers,
            prompt_tokens=prompt_tokens,
        )
        models = [auto.model, *auto.alternatives]
        auto_info = _auto_info(auto, classification)
        reason = f"{reason}; auto: {auto_info.pop('reason')}"
        info.update(auto_info)
    else:
        models = []
        for model_id in decision.chain:
            model = catalog.models[model_id]
            if api_key.allowed_models and model.id not in api_key.allowed_models:
                excluded.append(ExcludedModel(model.id, "this API key may not use it"))
                continue
            models.append(model)
        if decision.chain and not models:
            raise NotPermitted(
                f"The routing policy {selected.policy.name!r} routes this request to "
                f"{', '.join(decision.chain)}, which this API key may not use.",
                code="model_not_allowed",
                param="model",
            )
    if not models:
        raise _excluded_all(selected, excluded)
    if excluded:
        described["excluded"] = [{"model": e.model, "reason": e.reason} for e in excluded]
    info["reason"] = reason
    budget = policy.latency_budget_ms
    return models, (budget / 1000 if budget is not None else None)


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


def _refuse_nul(chat: ChatInput) -> None:
    """NUL cannot be stored (PostgreSQL text/jsonb) nor means anything in a prompt: refuse it
    before anything is held or sent, whatever format the request came in."""
    for index, message in enumerate(chat.messages):
        if "\x00" in message.content:
            raise ApplicationError(
                "Message text may not contain NUL (\\u0000) characters.",
                code="invalid_request",
                param=f"messages.{index}.content",
            )


async def hold_estimate(*, api_key: ApiKey, chat: ChatInput) -> int:
    """What :func:`chat_call` would hold for ``chat`` (0 when every member is BYOK), without
    holding anything: a fan-out (orchestration) reserves the sum of these up front."""
    _refuse_nul(chat)
    models = (await _route(api_key=api_key, chat=chat, fan_out=True)).models
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
    routing: _Routing | None = None,
) -> _Prepared:
    _refuse_nul(chat)
    if routing is None:
        fan_out = parent_hold is not None or bool(parent_request_id)
        routing = await _route(api_key=api_key, chat=chat, fan_out=fan_out)
    models = routing.models
    prompt_tokens = prompt_tokens_estimate(messages=chat.messages)
    upstreams = [_upstream(chat, model) for model in models]

    def worst(index: int) -> int:
        return reservation_micros(
            model=models[index], prompt_tokens=prompt_tokens, max_tokens=upstreams[index].max_tokens
        )

    # Limits hold the worst case of the chain: whichever member answers, it fits.
    costliest = max(range(len(models)), key=worst)

    async def admit() -> Admission:
        return await limits_admit(
            api_key=api_key,
            prompt_tokens=prompt_tokens,
            max_tokens=max(u.max_tokens or 0 for u in upstreams),
            model=models[costliest],
        )

    async def chain_of() -> list[Member]:
        credentials = {}
        for provider in dict.fromkeys(m.provider for m in models):
            credentials[provider] = await credential_for(
                org=api_key.organization, provider=provider
            )
        return [
            Member(model=m, credential=credentials[m.provider], upstream=u)
            for m, u in zip(models, upstreams, strict=True)
        ]

    def billed(chain: list[Member]) -> int:
        # One hold per request, covering the costliest member we would pay for: BYOK members
        # cost the wallet nothing, so a chain of them holds nothing at all.
        return max((worst(i) for i, member in enumerate(chain) if not member.byok), default=0)

    if parent_hold is None and limits_roomy(api_key):
        # Admission is all but certain: hold the credit while the counters decide.
        chain = await chain_of()
        admission, reservation = await _admit_while_holding(
            admit, api_key=api_key, amount_micros=billed(chain), request_id=request_id
        )
    else:
        admission = await admit()
        try:
            chain = await chain_of()
            amount = billed(chain)
            reservation = None
            if amount and parent_hold is not None:
                # Part of a fan-out: carve this call's hold out of the fan-out's reservation.
                reservation = await run_db(
                    _split, parent_hold=parent_hold, amount_micros=amount, request_id=request_id
                )
            elif amount:
                reservation = await _hold_or_give_back(
                    api_key=api_key, amount_micros=amount, request_id=request_id
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
    return _Prepared(
        chain=chain, reservation=reservation, log=log, admission=admission, routing=routing
    )


async def _walk(run: ChainRun, call: Any, *, deadline_s: float | None) -> tuple[Member, Any]:
    """``run.until_answer(call)`` within the policy's latency budget, if any: the budget bounds
    the whole walk to an answer (every attempt and failover together; for a stream, up to its
    first event). When it runs out the attempt in flight is abandoned (not counted against the
    provider's health: the budget, not the provider, ended it) and the request fails with 504."""
    if deadline_s is None:
        return await run.until_answer(call)
    started = time.perf_counter()
    scope = asyncio.timeout(deadline_s)
    try:
        async with scope:
            return await run.until_answer(call)
    except TimeoutError:
        if not scope.expired():
            raise
        member = run.last
        if member is not None:
            run.attempts.append(
                Attempt(
                    member.model.id,
                    member.model.provider,
                    STATUS_ERROR,
                    LatencyBudgetExceeded.code,
                    _elapsed_ms(started),
                )
            )
        raise LatencyBudgetExceeded(
            f"No model of the chain answered within the routing policy's latency budget "
            f"({int(deadline_s * 1000)} ms). Nothing was charged."
        ) from None


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
    fan_out = parent_hold is not None or bool(parent_request_id)
    routing = await _route(api_key=api_key, chat=chat, fan_out=fan_out)
    cache_key, cache_ttl = None, 0
    if not fan_out and cache_allowed(api_key=api_key):
        options = await cache_settings_of(org=api_key.organization)
        if options.enabled:
            cache_key, cache_ttl = _cache_key(api_key, chat, routing), options.ttl_seconds
            hit = await _from_cache(
                api_key=api_key,
                chat=chat,
                request_id=request_id,
                endpoint=endpoint,
                started=started,
                routing=routing,
                cache_key=cache_key,
                fee_micros=options.fee_micros,
            )
            if hit is not None:
                return hit
    prepared = await _prepare(
        api_key=api_key,
        chat=chat,
        request_id=request_id,
        endpoint=endpoint,
        started=started,
        parent_hold=parent_hold,
        parent_request_id=parent_request_id,
        routing=routing,
    )
    reservation = prepared.reservation
    run = ChainRun(prepared.chain)
    try:
        member, result = await _walk(run, _complete, deadline_s=prepared.routing.deadline_s)
    except ApplicationError as exc:
        await run_db(
            _release,
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
            run_db(
                _release,
                reservation=reservation,
                http_status=CLIENT_CLOSED_STATUS,
                error=CALL_ABORTED,
                **prepared.log_for(run, chat, answered=False),
            )
        )
        raise
    upstream_latency = _elapsed_ms(run.answered_at)
    run.answered(member, upstream_latency)
    gate = run.gate
    assert gate is not None  # noqa: S101 - set by the answering attempt
    model = member.model
    cost = cost_micros(model=model, usage=result.usage)
    log = prepared.log_for(run, chat, answered=True)
    latency = _elapsed_ms(started)

    async def book() -> None:
        """Everything the answer does not wait for: health, money + log, counters, cache."""
        await health.attempt_record(gate, error=None, latency_ms=upstream_latency, byok=member.byok)
        await _settle_answered(
            after_response=False,
            reservation=reservation,
            cost=cost,
            usage=result.usage,
            http_status=200,
            result=result,
            latency_ms=latency,
            **log,
        )
        await limits_record(
            api_key=api_key,
            usage=result.usage,
            cost_micros=cost,
            admission=prepared.admission,
        )
        if cache_key is not None and result.finish_reason in CACHEABLE_FINISH_REASONS:
            await response_cache_put(cache_key, _cached(model, result), ttl_seconds=cache_ttl)

    if reservation is None or fan_out:
        # Nothing held (BYOK) or part of a fan-out: booked before the answer, as its log row
        # is then the only trace of the call (GET /api/v1/requests waits on held calls only).
        await book()
    else:
        await after_answer(book)
    return ChatOutcome(
        request_id=request_id,
        model=model,
        result=result,
        cost_micros=cost,
        latency_ms=latency,
        upstream_ms=run.upstream_ms,
        route=log["route"],
        limits=prepared.admission.snapshot,
        byok=member.byok,
        cache=MISS if cache_key is not None else None,
    )


# --- response cache ------------------------------------------------------------------------------
# Only complete answers are worth repeating: a cut ("length") or filtered answer is not.
CACHEABLE_FINISH_REASONS = frozenset({"stop"})
CACHE_HIT_REASON = "answered from the response cache"


def _cache_key(api_key: ApiKey, chat: ChatInput, routing: _Routing) -> str:
    policy = routing.info.get("policy")
    return response_cache_key(
        api_key=api_key,
        messages=chat.messages,
        parameters={
            "model": chat.model,
            "max_tokens": chat.max_tokens,
            "temperature": chat.temperature,
            "top_p": chat.top_p,
            "stop": list(chat.stop) if chat.stop else None,
            "user": chat.user,
            "fallbacks": list(chat.fallbacks),
            "mesh": chat.mesh,
            "policy": chat.policy,
            # A new policy version may route elsewhere: its answers are not the old ones.
            "routed_by": [policy["name"], policy["version"]] if policy else None,
        },
    )


def _cached(model: CatalogModel, result: ChatResult) -> CachedAnswer:
    usage = result.usage
    return CachedAnswer(
        model=model.id,
        upstream_model=result.upstream_model,
        text=result.text,
        finish_reason=result.finish_reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def _cache_hit_write(
    *, api_key: ApiKey, fee_micros: int, request_id: str, log_result: ChatResult, **log: Any
) -> None:
    """Charge the hit's fee (a reservation settled at once: the wallet's one way to move money,
    with its insufficient-credit check) and write the log row, in one transaction."""
    with transaction.atomic():
        if fee_micros:
            reservation = _reserve(api_key=api_key, amount_micros=fee_micros, request_id=request_id)
            hotpath.settle(
                reservation=reservation,
                actual_micros=fee_micros,
                usage={"prompt_tokens": 0, "completion_tokens": 0, "cache_hit": True},
            )
        _log(
            api_key=api_key,
            request_id=request_id,
            result=log_result,
            cost=fee_micros,
            cache_hit=True,
            **log,
        )


async def _from_cache(
    *,
    api_key: ApiKey,
    chat: ChatInput,
    request_id: str,
    endpoint: str,
    started: float,
    routing: _Routing,
    cache_key: str,
    fee_micros: int,
) -> ChatOutcome | None:
    """The outcome of a cache hit (fee charged, logged), or ``None`` on a miss."""
    cached = await response_cache_get(cache_key)
    if cached is None:
        return None
    model = next((m for m in await acatalog_enabled_cached() if m.id == cached.model), None)
    if model is None:  # disabled since: ask a provider again
        return None
    usage = Usage(
        cached.prompt_tokens,
        cached.completion_tokens,
        cached_tokens=cached.cached_tokens,
        reasoning_tokens=cached.reasoning_tokens,
    )
    result = ChatResult(
        text=cached.text,
        finish_reason=cached.finish_reason,
        usage=usage,
        provider_request_id=None,
        upstream_model=cached.upstream_model,
    )
    route = routing.explain(
        {"requested": chat.model, "chosen": model.id, "reason": "requested", "attempts": []}
    )
    route.pop("chain", None)  # nothing was walked
    route["reason"] = CACHE_HIT_REASON
    route["cache"] = HIT
    # The log counts provider tokens: a hit used none. The answer still reports the usage of
    # the text it returns, as the original call measured it.
    log_result = ChatResult(
        text=cached.text,
        finish_reason=cached.finish_reason,
        usage=Usage(0, 0),
        provider_request_id=None,
        upstream_model=cached.upstream_model,
    )
    await run_db(
        _cache_hit_write,
        api_key=api_key,
        fee_micros=fee_micros,
        request_id=request_id,
        log_result=log_result,
        chat=chat,
        endpoint=endpoint,
        model=model,
        http_status=200,
        started=started,
        upstream_ms=0,
        route=route,
        category=str(routing.classification.category),
    )
    return ChatOutcome(
        request_id=request_id,
        model=model,
        result=result,
        cost_micros=fee_micros,
        latency_ms=_elapsed_ms(started),
        upstream_ms=0,
        route=route,
        cache=HIT,
    )


@dataclass
class ChatStream:
    """An accepted streaming call: credit is held; iterate ``events``.

    ``model`` and ``byok`` describe the requested model until the first event has been pulled;
    from then on the member of the chain that answers (failover happens before it). ``route`` is
    complete from the second event on (it is worked out once the first is out): read it at the end.
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
        # Explained in full (classification included) once the first token is out.
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
    ttft_ms: int | None = None
    latency = 0
    explained = False  # health and route, worked out once the first token is out
    try:
        member, (upstream, first) = await _walk(
            run, _stream_open, deadline_s=prepared.routing.deadline_s
        )
        latency = _elapsed_ms(run.answered_at)
        ttft_ms = _elapsed_ms(prepared.log["started"])
        run.answered(member, latency)
        assert run.gate is not None  # noqa: S101 - set by the answering attempt
        stream.model, stream.byok = member.model, member.byok
        async with aclosing(upstream) as events:
            event: StreamEvent | None = first
            while event is not None:
                if event.text:
                    texts.append(event.text)
                if event.finish_reason is not None:
                    finish_reason = event.finish_reason
                    usage = event.usage
                yield event
                if not explained:
                    # Once the first token is out: the provider's health (in the background),
                    # and the route, classification included, which is read when the stream ends.
                    explained = True
                    health.attempt_record_later(
                        run.gate, error=None, latency_ms=latency, byok=member.byok
                    )
                    stream.route.clear()
                    stream.route.update(
                        prepared.routing.explain(
                            run.route(requested=chat.model, chosen=member.model)
                        )
                    )
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
        if member is not None and not explained and run.gate is not None:
            # Answered, but the stream ended at its first event (the client went away, say).
            health.attempt_record_later(run.gate, error=None, latency_ms=latency, byok=member.byok)
        streamed = "".join(texts)
        if member is not None and usage is None and (streamed or error is None):
            usage = usage_estimate(messages=chat.messages, completion_text=streamed)
        settle: dict[str, Any] = {
            "reservation": reservation,
            "error": error,
            **prepared.log_for(run, chat, answered=member is not None),
            "ttft_ms": ttft_ms,
        }
        if error is None:
            settle["http_status"] = 200
        elif error is CALL_ABORTED:
            settle["http_status"] = CLIENT_CLOSED_STATUS
        else:
            settle["http_status"] = error.status_code
        api_key = prepared.log["api_key"]
        if usage is None or member is None:  # failed before any text: nothing happened
            await asyncio.shield(run_db(_after_response, write=_release, **settle))
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
                _settle_answered(
                    after_response=True, cost=cost, usage=usage, result=result, **settle
                )
            )
            outcome.update(cost_micros=cost, usage=usage)
            await limits_record(
                api_key=api_key,
                usage=usage,
                cost_micros=cost,
                admission=prepared.admission,
            )
