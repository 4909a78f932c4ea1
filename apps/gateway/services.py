"""Writes of gateway data."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from llmwise.errors import ApplicationError

from . import byok
from .catalog_data import MODELS, write_catalog
from .models import (
    CACHE_FEE_MAX_MICROS,
    CACHE_TTL_MAX_SECONDS,
    CatalogModel,
    ModelAlias,
    OrgGatewaySettings,
    ProviderKey,
    RequestLog,
)
from .response_cache import cache_settings_clear
from .selectors import catalog_resolve


@transaction.atomic
def catalog_seed() -> int:
    """Create the seeded models and aliases that are missing (idempotent); returns how many
    models the seed holds."""
    write_catalog(CatalogModel, ModelAlias)
    return len(MODELS)


@transaction.atomic
def org_gateway_settings_update(
    *,
    org: Organization,
    actor: User | None,
    cache_enabled: bool,
    cache_ttl_seconds: int,
    cache_fee_micros: int,
) -> OrgGatewaySettings:
    """Set ``org``'s response-cache options (owners and admins; audit-logged when changed)."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    if not 1 <= cache_ttl_seconds <= CACHE_TTL_MAX_SECONDS:
        raise ApplicationError(
            f"The cache TTL is from 1 to {CACHE_TTL_MAX_SECONDS} seconds.",
            param="cache_ttl_seconds",
        )
    if not 0 <= cache_fee_micros <= CACHE_FEE_MAX_MICROS:
        raise ApplicationError(
            f"The fee per cache hit is from 0 to {CACHE_FEE_MAX_MICROS} micro-USD.",
            param="cache_fee_micros",
        )
    row, _ = OrgGatewaySettings.objects.select_for_update().get_or_create(organization=org)
    before = {
        "cache_enabled": row.cache_enabled,
        "cache_ttl_seconds": row.cache_ttl_seconds,
        "cache_fee_micros": row.cache_fee_micros,
    }
    after = {
        "cache_enabled": cache_enabled,
        "cache_ttl_seconds": cache_ttl_seconds,
        "cache_fee_micros": cache_fee_micros,
    }
    if before != after:
        for name, value in after.items():
            setattr(row, name, value)
        row.save()
        audit_record(
            org=org,
            actor=actor,
            action="gateway_settings.update",
            target="response_cache",
            data={"from": before, "to": after},
        )
    # Now for this process, and again once committed (a request may re-read the old row).
    cache_settings_clear(org=org)
    transaction.on_commit(lambda: cache_settings_clear(org=org))
    return row


@transaction.atomic
def org_default_chain_set(
    *, org: Organization, actor: User | None, model_ids: list[str]
) -> OrgGatewaySettings:
    """Set the failover chain `"mesh": true` requests use (admins; audit-logged when changed).

    Each id must be an enabled catalog model (or alias, stored as its id); at most
    ``GATEWAY_MESH_MAX_CHAIN`` models, no repeats.
    """
    membership_require(org=org, user=actor, role=Role.ADMIN)
    chain: list[str] = []
    for index, model_id in enumerate(m.strip() for m in model_ids if m.strip()):
        model = catalog_resolve(model_id=model_id)
        if model is None:
            raise ApplicationError(
                f"Unknown or disabled model {model_id!r}.", param=f"default_chain.{index}"
            )
        if model.id in chain:
            raise ApplicationError(
                f"{model.id} is in the chain twice.", param=f"default_chain.{index}"
            )
        chain.append(model.id)
    if len(chain) > settings.GATEWAY_MESH_MAX_CHAIN:
        raise ApplicationError(
            f"A chain has at most {settings.GATEWAY_MESH_MAX_CHAIN} models.", param="default_chain"
        )
    row, _ = OrgGatewaySettings.objects.select_for_update().get_or_create(organization=org)
    if row.default_chain != chain:
        audit_record(
            org=org,
            actor=actor,
            action="gateway.default_chain",
            target=f"org:{org.pk}",
            data={"from": row.default_chain, "to": chain},
        )
        row.default_chain = chain
        row.save(update_fields=["default_chain", "updated_at"])
    return row


@transaction.atomic
def organization_texts_erase(*, org: Organization) -> int:
    """Delete what ``org`` stored of its users' texts and secrets, because it is being closed.

    Every request log row loses its prompt and completion (metadata, tokens and cost stay:
    they explain the ledger's charges); the provider keys (BYOK) are deleted through
    :func:`apps.gateway.byok.provider_key_delete` (audit-logged, credential cache cleared); the
    response cache is switched off, so answers cached before can no longer be served and expire
    with their TTL. Returns the number of log rows whose texts were deleted.
    """
    wiped = (
        RequestLog.objects.filter(organization=org)
        .filter(Q(prompt__isnull=False) | ~Q(completion=""))
        .update(prompt=None, completion="")
    )
    for provider in ProviderKey.objects.filter(organization=org).values_list("provider", flat=True):
        byok.provider_key_delete(org=org, actor=None, provider=provider)
    OrgGatewaySettings.objects.filter(organization=org).update(cache_enabled=False)
    cache_settings_clear(org=org)
    transaction.on_commit(lambda: cache_settings_clear(org=org))
    return wiped
