"""Optional exact-match response cache, per organization (off by default).

A non-streaming chat request whose normalized form (organization, the key's allowed models, the
model asked for and every parameter, the messages, and the routing policy version it ran under)
matches one answered within the organization's TTL is answered from the cache: no provider call,
no provider tokens, a configurable fee (or nothing) charged through the wallet services, and a
log row marked ``cache_hit``.

Never used for zero retention (the organization's or the key's: the answer would have to be
stored), never across organizations (the organization is part of the key), never for streams or
for the calls of a fan-out (their parent accounts for them). The store is Django's cache: Redis
when configured (shared by every worker), in-process memory in the embedded default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from django.conf import settings
from django.core.cache import cache

from apps.accounts.models import ApiKey, Organization

from .models import OrgGatewaySettings
from .providers.base import ChatMessage

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "gw:respcache:v1:"
HIT: Final = "hit"
MISS: Final = "miss"


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = False
    ttl_seconds: int = 0
    fee_micros: int = 0


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit needs to answer again (the text is stored: never under zero retention)."""

    model: str
    upstream_model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int


# (organization id, creation time) → (expires, settings): the hot path asks on every request.
_settings_cache: dict[tuple[int, datetime], tuple[float, CacheSettings]] = {}
SETTINGS_CACHE_MAX_ENTRIES = 10_000


def cache_settings_clear(*, org: Organization) -> None:
    """Forget ``org``'s cached settings (after they changed)."""
    _settings_cache.pop((org.pk, org.created_at), None)


async def cache_settings_of(*, org: Organization) -> CacheSettings:
    """``org``'s cache settings, remembered in-process for ``GATEWAY_POLICY_CACHE_SECONDS``
    (the same delay as routing policies: a change shows at once where it was made)."""
    cache_key = (org.pk, org.created_at)
    now = time.monotonic()
    cached = _settings_cache.get(cache_key)
    if cached is not None and cached[0] > now:
        return cached[1]
    row = await OrgGatewaySettings.objects.filter(organization_id=org.pk).afirst()
    found = (
        CacheSettings(
            enabled=row.cache_enabled,
            ttl_seconds=row.cache_ttl_seconds,
            fee_micros=row.cache_fee_micros,
        )
        if row is not None
        else CacheSettings()
    )
    if len(_settings_cache) >= SETTINGS_CACHE_MAX_ENTRIES:
        _settings_cache.clear()
    _settings_cache[cache_key] = (now + settings.GATEWAY_POLICY_CACHE_SECONDS, found)
    return found


def cache_allowed(*, api_key: ApiKey) -> bool:
    """Zero retention of the organization *or* the key rules the cache out, whatever overrides."""
    return api_key.zero_retention is not True and not api_key.organization.zero_retention


def response_cache_key(
    *,
    api_key: ApiKey,
    messages: tuple[ChatMessage, ...],
    parameters: dict[str, Any],
) -> str:
    """The normalized request, hashed: same organization, same key restrictions, same model,
    parameters and messages → same key. ``parameters`` holds everything else that shapes the
    answer (model, max_tokens, temperature, ..., the policy version that routed it)."""
    org = api_key.organization
    normalized = {
        "org": [org.pk, org.created_at.isoformat()],
        "allowed": sorted(api_key.allowed_models),
        "messages": [[m.role, m.content] for m in messages],
        **parameters,
    }
    encoded = json.dumps(normalized, sort_keys=True, separators=(",", ":"), default=str)
    return KEY_PREFIX + hashlib.sha256(encoded.encode()).hexdigest()


async def response_cache_get(key: str) -> CachedAnswer | None:
    """The cached answer, or ``None`` (missing, or unreadable: a cache is never an outage)."""
    try:
        value = await cache.aget(key)
    except Exception:  # the store is down: answer from the provider instead
        logger.warning("response cache unavailable (get)", exc_info=True)
        return None
    if not isinstance(value, dict):
        return None
    try:
        return CachedAnswer(**value)
    except TypeError:  # written by another version of this code
        return None


async def response_cache_put(key: str, answer: CachedAnswer, *, ttl_seconds: int) -> None:
    try:
        await cache.aset(key, asdict(answer), timeout=ttl_seconds)
    except Exception:
        logger.warning("response cache unavailable (set)", exc_info=True)
