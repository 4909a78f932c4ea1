"""Per-key and per-organization limits (RPM, TPM, spend cap), checked before a call.

``limits_admit`` runs before anything is reserved or sent and raises :class:`RateLimited` (429,
with ``retry_after``) or :class:`SpendCapReached` (402). It returns an :class:`Admission`: what it
counted, which ``limits_record`` trues up once the call is settled (``limits_release`` when the
call never ran), and the snapshot behind the ``x-ratelimit-*`` headers.

Decisions (docs/providers.md, "Limits"):

- **RPM** counts every admitted request in a sliding window (see :mod:`.counters`).
- **TPM holds the worst case at admission** (prompt estimate + ``max_tokens``, the same figure the
  wallet reserves for) and is trued up to the real usage after the call. Counting only real usage
  after the fact would let a burst of concurrent requests all pass an empty window and blow far
  past the limit; with the hold, admitted calls can never exceed it, and the true-up gives back
  what a call did not use. A request whose worst case alone exceeds a TPM limit can never pass:
  400 (``max_tokens`` too large for the limit), not a 429 that SDKs would retry in vain.
- **Spend cap** is the key's lifetime spend from the request log (every call's cost, BYOK calls'
  would-be cost included: a cap guards the customer's money whichever account pays), cached in
  the counters for ``GATEWAY_SPEND_CACHE_SECONDS`` and kept current after each call. Admission
  also holds the call's worst-case cost against the cap, so concurrent calls cannot overspend
  it together. 402 (``insufficient_quota``): retrying does not help until an admin raises the
  cap, and SDKs retry 429s automatically.
- Organization RPM/TPM come from settings (``GATEWAY_ORG_RPM``/``GATEWAY_ORG_TPM``, 0 = none) and
  count every key of the organization; one ``take`` counts key and org windows all or nothing.
- The key row is read fresh on every request (authentication), so a changed limit or a
  revocation applies to the very next call.
- Windows far from their limit admit a server process's calls from an allowance counted in
  advance (see "admission from an allowance" below): no counter round trip before the call.
- If the counter store is unreachable, calls go through (logged): an outage of Redis must not
  take the gateway down, and the wallet's reservation still bounds the money.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Sum
from redis.exceptions import RedisError

from apps.accounts.models import ApiKey
from llmwise import adb, metrics
from llmwise.errors import ApplicationError

from .counters import Counters, Take, Window, WindowState, bucket_index, counters
from .models import CatalogModel, RequestLog
from .pricing import reservation_micros
from .providers.base import Usage

logger = logging.getLogger(__name__)

SECONDS_PER_MINUTE = 60
MICROS_PER_USD = 1_000_000
# A spend hold outlives the longest call (the wallet's reservation TTL): if the process dies
# mid-call, the hold fades with it.
SPEND_HOLD_TTL_SECONDS = 15 * SECONDS_PER_MINUTE
NO_USAGE = Usage(prompt_tokens=0, completion_tokens=0)
COUNTER_ERRORS = (RedisError, OSError)


class RateLimited(ApplicationError):
    """A request or token rate limit said no: HTTP 429 with Retry-After."""

    status_code: int = 429
    error_type = "rate_limit_error"
    code = "rate_limited"

    def __init__(
        self, message: str, *, code: str, retry_after: float, limits: LimitsSnapshot | None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.limits = limits


class SpendCapReached(ApplicationError):
    """The key's spend cap is reached, or the call's worst case would cross it: HTTP 402."""

    status_code: int = 402
    error_type = "insufficient_quota"
    code = "spend_cap_reached"


@dataclass(frozen=True, slots=True)
class LimitsSnapshot:
    """The tightest request and token windows after admission (or at refusal)."""

    requests: WindowState | None = None
    tokens: WindowState | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the windows that have a limit."""
        out: dict[str, str] = {}
        for name, state in (("requests", self.requests), ("tokens", self.tokens)):
            if state is None or state.limit is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = str(state.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
            out[f"x-ratelimit-reset-{name}"] = _duration(state.reset_seconds)
        return out


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``limits_admit`` counted for one call, to true up or give back afterwards."""

    at: float = 0.0  # the counters' clock when the windows were counted
    token_windows: tuple[Window, ...] = ()  # amount = tokens held
    spend_held_micros: int = 0
    snapshot: LimitsSnapshot = LimitsSnapshot()


NOTHING_ADMITTED = Admission()


@dataclass(frozen=True, slots=True)
class _Limit:
    window: Window
    code: str
    what: str  # "this API key" / "your organization"
    unit: str  # "requests" / "tokens"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``850ms``, ``12s``, ``1m30s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    minutes, rest = divmod(whole, SECONDS_PER_MINUTE)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def _per(window_seconds: float) -> str:
    return "per minute" if window_seconds == SECONDS_PER_MINUTE else f"per {window_seconds:g} s"


def _usd(micros: int) -> str:
    return f"${Decimal(micros) / MICROS_PER_USD:.6f}".rstrip("0").rstrip(".")


def _limits_for(*, api_key: ApiKey, tokens: int) -> list[_Limit]:
    size = float(settings.GATEWAY_LIMITS_WINDOW_SECONDS)
    key, org = f"key:{api_key.prefix}", f"org:{api_key.organization_id}"
    candidates = (
        (api_key.rpm_limit, f"{key}:rpm", 1, "rate_limit_rpm", "this API key", "requests"),
        (api_key.tpm_limit, f"{key}:tpm", tokens, "rate_limit_tpm", "this API key", "tokens"),
        (
            settings.GATEWAY_ORG_RPM,
            f"{org}:rpm",
            1,
            "org_rate_limit",
            "your organization",
            "requests",
        ),
        (
            settings.GATEWAY_ORG_TPM,
            f"{org}:tpm",
            tokens,
            "org_rate_limit_tpm",
            "your organization",
            "tokens",
        ),
    )
    return [
        _Limit(Window(name, size, amount, limit), code, what, unit)
        for limit, name, amount, code, what, unit in candidates
        if limit
    ]


def _snapshot(limits: list[_Limit], taken: Take) -> LimitsSnapshot:
    tightest: dict[str, WindowState] = {}
    for limit, state in zip(limits, taken.states, strict=True):
        best = tightest.get(limit.unit)
        if best is None or (state.remaining or 0) < (best.remaining or 0):
            tightest[limit.unit] = state
    return LimitsSnapshot(requests=tightest.get("requests"), tokens=tightest.get("tokens"))


def _spend_from_log(*, api_key_id: int) -> int:
    total = RequestLog.objects.filter(api_key_id=api_key_id).aggregate(total=Sum("cost_micros"))
    return int(total["total"] or 0)


async def _spent(store: Counters, api_key: ApiKey) -> int:
    """The key's lifetime spend: cached, else summed from the request log and cached."""
    name = f"spend:{api_key.prefix}"
    cached = await store.value_get(name)
    if cached is not None:
        return cached
    total = await sync_to_async(_spend_from_log)(api_key_id=api_key.pk)
    await store.value_set(
        name, total, ttl_seconds=settings.GATEWAY_SPEND_CACHE_SECONDS, only_if_absent=True
    )
    return total


async def _spend_hold(
    store: Counters, *, api_key: ApiKey, model: CatalogModel | None, tokens: tuple[int, int]
) -> int:
    """Refuse a key at its cap; hold the call's worst case against the cap. Returns the hold."""
    cap = api_key.spend_cap_micros
    if cap is None:
        return 0
    spent = await _spent(store, api_key)
    if spent >= cap:
        raise SpendCapReached(
            f"This API key has reached its spend cap of {_usd(cap)} (spent {_usd(spent)}). "
            "An admin of the organization can raise the cap or issue another key."
        )
    if model is None:
        return 0
    worst = reservation_micros(model=model, prompt_tokens=tokens[0], max_tokens=tokens[1])
    done, held = await store.value_add(
        f"spend_hold:{api_key.prefix}",
        worst,
        ttl_seconds=SPEND_HOLD_TTL_SECONDS,
        limit=cap - spent,
    )
    if not done:
        left = max(cap - spent - (held or 0), 0)
        raise SpendCapReached(
            f"This call could cost up to {_usd(worst)}, more than the {_usd(left)} left under "
            f"this API key's spend cap of {_usd(cap)} (spent {_usd(spent)}, "
            f"{_usd(held or 0)} held by calls in progress). Lower max_tokens or raise the cap.",
            code="spend_cap_would_exceed",
            param="max_tokens",
        )
    return worst


async def _spend_release(store: Counters, *, api_key: ApiKey, micros: int) -> None:
    if micros:
        await store.value_add(
            f"spend_hold:{api_key.prefix}",
            -micros,
            ttl_seconds=None,
            floor=0,
            only_if_present=True,
        )


async def limits_admit(
    *,
    api_key: ApiKey,
    prompt_tokens: int,
    max_tokens: int,
    model: CatalogModel | None = None,
) -> Admission:
    """Refuse the call when the key or its organization is over a limit; else count it.

    ``model`` prices the worst case for the spend cap (without it only a reached cap refuses).
    """
    tokens = prompt_tokens + max_tokens
    limits = _limits_for(api_key=api_key, tokens=tokens)
    for limit in limits:
        window = limit.window
        if limit.unit == "tokens" and window.limit is not None and tokens > window.limit:
            raise ApplicationError(
                f"This request may use up to {tokens} tokens (prompt and max_tokens), more than "
                f"{limit.what} may use {_per(window.window_seconds)} "
                f"({window.limit}). Lower max_tokens or shorten the prompt.",
                code="tokens_exceed_tpm_limit",
                param="max_tokens",
            )
    if not limits and api_key.spend_cap_micros is None:
        return NOTHING_ADMITTED
    allowed = _from_allowance(limits) if api_key.spend_cap_micros is None else None
    if allowed is not None:
        return allowed
    store = counters()
    try:
        held = await _spend_hold(
            store, api_key=api_key, model=model, tokens=(prompt_tokens, max_tokens)
        )
    except COUNTER_ERRORS:
        logger.exception("limits: counters unavailable, admitting %s unchecked", api_key.prefix)
        return NOTHING_ADMITTED
    try:
        taken = await store.take([limit.window for limit in limits])
    except BaseException as exc:
        await asyncio.shield(_spend_release(store, api_key=api_key, micros=held))
        if isinstance(exc, COUNTER_ERRORS):
            logger.exception("limits: counters unavailable, admitting %s unchecked", api_key.prefix)
            return NOTHING_ADMITTED
        raise
    snapshot = _snapshot(limits, taken)
    refused = taken.refused
    _note_room(api_key, taken.states, refused=taken.refused_index is not None)
    if taken.refused_index is not None and refused is not None:
        await _spend_release(store, api_key=api_key, micros=held)
        limit = limits[taken.refused_index]
        metrics.rate_limit_rejected(limit.code)
        raise RateLimited(
            f"Rate limit reached: {limit.what} allows "
            f"{refused.limit} {limit.unit} {_per(refused.window_seconds)}. "
            f"Retry after {refused.retry_after:.1f} s.",
            code=limit.code,
            retry_after=refused.retry_after,
            limits=snapshot,
        )
    if api_key.spend_cap_micros is None:
        _allowance_offer(limits, taken.states)
    return Admission(
        at=taken.at,
        token_windows=tuple(limit.window for limit in limits if limit.unit == "tokens"),
        spend_held_micros=held,
        snapshot=snapshot,
    )


# --- admission from an allowance ---------------------------------------------------------------
# Windows far from their limit admit a process's calls from an allowance: a share of what each
# window has left, counted in the shared counters by one take made in the background, then
# handed out in memory, so the call waits for no counter round trip before going upstream. What
# a process may admit on its own is counted already, so processes together can never pass a
# limit; an allowance's unused part counts against the window until it is given back (when the
# window's bucket moves on or a new allowance replaces it): near a limit a few calls may be
# refused a little early, never admitted beyond it. Small limits never get one (an allowance of
# fewer than ALLOWANCE_MIN_CALLS calls), so they are counted call by call as before. Only on
# the server's loop (the background takes need a loop that outlives the request; llmwise.adb
# marks it, on PostgreSQL deployments) and for keys without a spend cap (its hold is per call).
ALLOWANCE_SHARE = 0.05  # of what each window has left
ALLOWANCE_ROOM = 0.5  # offered only while every window has at least this share of its limit left
ALLOWANCE_MIN_CALLS = 4
# Bounded memory: all forgotten at once when full (their parts stay counted).
ALLOWANCES_MAX = 10_000

_AllowanceKey = tuple[tuple[str, float, int | None], ...]


@dataclass(eq=False, slots=True)
class _Allowance:
    limits: tuple[_Limit, ...]  # as counted: each window's ``amount`` was taken in advance
    at: float  # the counters' clock when it was counted (its buckets)
    left: list[int]  # per window, what is not handed out yet
    snapshot: LimitsSnapshot  # the windows as the allowance's take left them
    roomy: bool  # its take left ALLOWANCE_ROOM of every window: another may follow it


_allowances: dict[_AllowanceKey, _Allowance] = {}
_allowance_tasks: dict[_AllowanceKey, asyncio.Task[None]] = {}


def _allowance_key(limits: Sequence[_Limit]) -> _AllowanceKey:
    return tuple((x.window.key, x.window.window_seconds, x.window.limit) for x in limits)


def _from_allowance(limits: list[_Limit]) -> Admission | None:
    """Admit from this process's allowance for these windows, if it covers the call."""
    key = _allowance_key(limits)
    allowance = _allowances.get(key)
    if allowance is None:
        return None
    windows = [limit.window for limit in limits]
    now = counters().clock()
    if any(
        bucket_index(now, w.window_seconds) != bucket_index(allowance.at, w.window_seconds)
        for w in windows
    ):
        _allowance_retire(key)  # its bucket is no longer the current one
        return None
    if any(left < w.amount for left, w in zip(allowance.left, windows, strict=True)):
        if allowance.roomy:
            _allowance_make(key, allowance.limits)
        return None
    for i, window in enumerate(windows):
        allowance.left[i] -= window.amount
    if allowance.roomy and any(
        left * 2 < taken.window.amount
        for left, taken in zip(allowance.left, allowance.limits, strict=True)
    ):
        _allowance_make(key, allowance.limits)  # the next one, before this one runs out
    return Admission(
        at=allowance.at,
        token_windows=tuple(limit.window for limit in limits if limit.unit == "tokens"),
        snapshot=allowance.snapshot,
    )


def _allowance_offer(limits: list[_Limit], states: Sequence[WindowState]) -> None:
    """After a call counted on its own: make an allowance if every window has room for one."""
    if not limits or not adb.active():
        return
    key = _allowance_key(limits)
    if key in _allowances or key in _allowance_tasks:
        return
    if not _room_for_allowances(limits, states):
        return
    batches = []
    for limit, state in zip(limits, states, strict=True):
        window, remaining = limit.window, state.remaining or 0
        batch = int(remaining * ALLOWANCE_SHARE)
        if batch < ALLOWANCE_MIN_CALLS * max(window.amount, 1):
            return
        batches.append(replace(limit, window=replace(window, amount=batch)))
    _allowance_make(key, tuple(batches))


def _room_for_allowances(limits: Sequence[_Limit], states: Sequence[WindowState]) -> bool:
    return all(
        limit.window.limit is not None
        and (state.remaining or 0) >= limit.window.limit * ALLOWANCE_ROOM
        for limit, state in zip(limits, states, strict=True)
    )


def _allowance_make(key: _AllowanceKey, batches: tuple[_Limit, ...]) -> None:
    if key in _allowance_tasks or not adb.active():
        return
    task = asyncio.create_task(_allowance_take(key, batches))
    _allowance_tasks[key] = task
    task.add_done_callback(lambda _: _allowance_tasks.pop(key, None))


async def _allowance_take(key: _AllowanceKey, batches: tuple[_Limit, ...]) -> None:
    try:
        taken = await counters().take([limit.window for limit in batches])
    except COUNTER_ERRORS:
        logger.exception("limits: counters unavailable, no allowance made")
        return
    if not taken.admitted:
        return  # the windows have less room than asked: calls are counted one by one
    if key in _allowances:
        _allowance_retire(key)
    elif len(_allowances) >= ALLOWANCES_MAX:
        _allowances.clear()
    _allowances[key] = _Allowance(
        limits=batches,
        at=taken.at,
        left=[limit.window.amount for limit in batches],
        snapshot=_snapshot(list(batches), taken),
        roomy=_room_for_allowances(batches, taken.states),
    )


def _allowance_retire(key: _AllowanceKey) -> None:
    """Forget the allowance and give back, in the background, what it did not hand out."""
    allowance = _allowances.pop(key, None)
    if allowance is None:
        return
    unused = [
        replace(limit.window, amount=-left)
        for limit, left in zip(allowance.limits, allowance.left, strict=True)
        if left > 0
    ]
    if unused:
        task = asyncio.ensure_future(_give_back(unused, at=allowance.at))
        _giving_back.add(task)
        task.add_done_callback(_giving_back.discard)


_giving_back: set[asyncio.Future[None]] = set()


async def _give_back(windows: list[Window], *, at: float) -> None:
    try:
        await counters().adjust(windows, at=at)
    except COUNTER_ERRORS:
        logger.exception("limits: counters unavailable, an unused allowance stays counted")


# Keys (by prefix) whose last admission left room in every window. For these the call service
# may write the credit hold while admission is still being decided, instead of after it: the
# two waits overlap. A key near or at a limit is admitted first, so a client hammering past its
# limit is refused by the counters alone, without a database write per refused request.
ROOM_FRACTION = 0.25  # at least this share of every window left (and ROOM_MIN_LEFT)
ROOM_MIN_LEFT = 2
ROOM_KEYS_MAX = 10_000  # bounded memory: forgotten all at once when full
_roomy: dict[str, bool] = {}


def _note_room(api_key: ApiKey, states: Sequence[WindowState], *, refused: bool) -> None:
    roomy = not refused and all(
        state.limit is None
        or (state.remaining or 0) >= max(ROOM_MIN_LEFT, state.limit * ROOM_FRACTION)
        for state in states
    )
    if len(_roomy) >= ROOM_KEYS_MAX and api_key.prefix not in _roomy:
        _roomy.clear()
    _roomy[api_key.prefix] = roomy


def limits_roomy(api_key: ApiKey) -> bool:
    """Whether admission is all but certain for ``api_key``: counted limits only (no spend cap,
    whose check reads the spend), and its last admission in this process left room in every
    window (see ``ROOM_FRACTION``). A key this process has not admitted yet is not roomy."""
    return api_key.spend_cap_micros is None and _roomy.get(api_key.prefix, False)


async def limits_record(
    *,
    api_key: ApiKey,
    usage: Usage,
    cost_micros: int,
    admission: Admission = NOTHING_ADMITTED,
) -> None:
    """Count a settled call: true the token hold up to the real usage, add the cost to the
    key's spend and give back the spend hold. Never raises for the counters: the call is done."""
    if not admission.token_windows and api_key.spend_cap_micros is None:
        return
    store = counters()
    used = usage.total_tokens
    try:
        if admission.token_windows:
            await store.adjust(
                [replace(w, amount=used - w.amount) for w in admission.token_windows],
                at=admission.at,
            )
        if api_key.spend_cap_micros is not None and cost_micros:
            # Only a cached sum is kept current; a missing one is re-read from the log, which
            # already holds this call's row (settled before this runs).
            await store.value_add(
                f"spend:{api_key.prefix}", cost_micros, ttl_seconds=None, only_if_present=True
            )
        await _spend_release(store, api_key=api_key, micros=admission.spend_held_micros)
    except COUNTER_ERRORS:
        logger.exception("limits: counters unavailable, usage of %s not counted", api_key.prefix)


async def limits_release(*, api_key: ApiKey, admission: Admission) -> None:
    """Give back what was held for a call that never ran (refused later, or failed upstream
    before producing anything). The request itself stays counted in the RPM windows."""
    await limits_record(api_key=api_key, usage=NO_USAGE, cost_micros=0, admission=admission)


def limits_allowances_clear() -> None:
    """Forget every allowance of this process without giving anything back (tests: the counters
    they were counted in are emptied between tests)."""
    _allowances.clear()
    _allowance_tasks.clear()
