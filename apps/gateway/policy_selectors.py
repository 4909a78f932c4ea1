"""Reads of routing policies: listing, lookup, the policy a request runs under, the dry run.

Everything takes the organization first; another organization's policy is simply not found.
:func:`policy_for` is what the call service uses: the request's named policy, else the API key's
pinned one, else the organization's default, else none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import QuerySet

from apps.accounts.models import ApiKey, Organization
from llmwise.errors import NotFound

from .models import (
    ApiKeyPolicyPin,
    CatalogModel,
    ModelAlias,
    ProviderKey,
    RoutingPolicy,
    RoutingPolicyVersion,
)
from .pricing import prompt_tokens_estimate
from .providers.base import ChatMessage
from .routing.classifier import classify
from .routing.policies import (
    AUTO,
    ClassificationLike,
    EffectivePolicy,
    PolicyCatalog,
    PolicyDecision,
    PolicyLookup,
    policy_compile,
    policy_route,
)


class PolicySource:
    REQUEST = "request"  # "policy": "<name>" in the request body
    API_KEY = "api_key"  # the calling key is pinned to it
    ORG_DEFAULT = "org_default"


# --- catalog ----------------------------------------------------------------------------------
def policy_catalog() -> PolicyCatalog:
    """The enabled catalog and its aliases, as policy validation and evaluation see them."""
    models = {model.id: model for model in CatalogModel.objects.filter(enabled=True)}
    aliases = dict(ModelAlias.objects.filter(model__enabled=True).values_list("alias", "model_id"))
    return PolicyCatalog(models=models, aliases=aliases)


apolicy_catalog = sync_to_async(policy_catalog)


# --- policies ---------------------------------------------------------------------------------
def routing_policies_of(*, org: Organization) -> QuerySet[RoutingPolicy]:
    """``org``'s policies by name, with their current version."""
    return (
        RoutingPolicy.objects.filter(organization=org)
        .select_related("organization", "current_version", "current_version__created_by")
        .order_by("name")
    )


def routing_policy_of(*, org: Organization, policy_id: int) -> RoutingPolicy:
    """``org``'s policy with this id; another organization's is not found."""
    policy = routing_policies_of(org=org).filter(pk=policy_id).first()
    if policy is None:
        raise NotFound("Routing policy not found.", code="policy_not_found")
    return policy


def routing_policy_named(*, org: Organization, name: str) -> RoutingPolicy:
    """``org``'s policy called ``name`` (as a request or ``extends`` names it)."""
    policy = routing_policies_of(org=org).filter(name=name).first()
    if policy is None:
        raise NotFound(
            f"There is no routing policy named {name!r} in this organization.",
            code="policy_not_found",
            param="policy",
        )
    return policy


def routing_policy_versions_of(*, policy: RoutingPolicy) -> QuerySet[RoutingPolicyVersion]:
    """Every version of ``policy``, newest first."""
    return policy.versions.select_related("created_by").order_by("-number")


def routing_policy_documents(*, org: Organization) -> dict[str, dict[str, Any]]:
    """The current document of each of ``org``'s policies, by name (one query)."""
    rows = RoutingPolicy.objects.filter(organization=org, current_version__isnull=False)
    return dict(rows.values_list("name", "current_version__document"))


def routing_policy_lookup(
    *, org: Organization, overrides: Mapping[str, Mapping[str, Any] | None] | None = None
) -> PolicyLookup:
    """A lookup of ``org``'s current documents for ``extends``; ``overrides`` replaces some (a
    document about to be saved) or hides them (``None``: a policy about to be deleted)."""
    documents: dict[str, Mapping[str, Any] | None] = dict(routing_policy_documents(org=org))
    documents.update(overrides or {})
    return documents.get


def routing_policy_dependents(*, org: Organization, name: str) -> list[str]:
    """Names of ``org``'s policies whose current document extends ``name``."""
    return sorted(
        other
        for other, document in routing_policy_documents(org=org).items()
        if isinstance(document, dict) and document.get("extends") == name
    )


def routing_policy_effective(*, policy: RoutingPolicy) -> EffectivePolicy:
    """``policy``'s current version with ``extends`` resolved against its organization's
    current documents (one more query only when it extends another policy)."""
    version = policy.current_version
    if version is None:  # only while a create is half-way, inside its own transaction
        raise NotFound("Routing policy not found.", code="policy_not_found")
    document = version.document
    lookup = routing_policy_lookup(org=policy.organization) if document.get("extends") else None
    return policy_compile(name=policy.name, document=document, lookup=lookup)


# --- pins ---------------------------------------------------------------------------------------
def api_key_pins_of(*, org: Organization) -> dict[int, RoutingPolicy]:
    """``org``'s pinned API keys: key id → policy."""
    pins = ApiKeyPolicyPin.objects.filter(policy__organization=org).select_related("policy")
    return {pin.api_key_id: pin.policy for pin in pins}


def api_key_of(*, org: Organization, api_key_id: int) -> ApiKey:
    """``org``'s API key with this id; another organization's key, or an internal one (which
    customers do not manage), is not found."""
    key = ApiKey.objects.filter(organization=org, pk=api_key_id, internal=False).first()
    if key is None:
        raise NotFound("API key not found.", code="api_key_not_found")
    return key


# --- selection ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SelectedPolicy:
    """The policy a request runs under, why (``source``), and its effective rules."""

    policy: RoutingPolicy
    version: RoutingPolicyVersion
    effective: EffectivePolicy
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.policy.name,
            "version": self.version.number,
            "source": self.source,
            "lineage": list(self.effective.lineage),
        }


def _selected(policy: RoutingPolicy, source: str) -> SelectedPolicy:
    assert policy.current_version is not None  # noqa: S101 - every committed policy has one
    return SelectedPolicy(
        policy=policy,
        version=policy.current_version,
        effective=routing_policy_effective(policy=policy),
        source=source,
    )


def policy_for(
    *, org: Organization, api_key: ApiKey | None, requested_name: str | None
) -> SelectedPolicy | None:
    """The policy a request of ``org`` runs under, in order of precedence: the one the request
    names (an unknown name is a 404 ``policy_not_found`` on ``param="policy"``), the calling
    key's pinned policy, the organization's default; ``None`` when there is none.

    One to three small queries (plus one when the policy ``extends`` another).
    """
    if requested_name:
        return _selected(routing_policy_named(org=org, name=requested_name), PolicySource.REQUEST)
    if api_key is not None and api_key.organization_id == org.pk:
        pin = (
            ApiKeyPolicyPin.objects.filter(api_key=api_key)
            .select_related("policy__current_version", "policy__organization")
            .first()
        )
        if pin is not None:
            return _selected(pin.policy, PolicySource.API_KEY)
    default = (
        RoutingPolicy.objects.filter(organization=org, is_default=True)
        .select_related("current_version", "organization")
        .first()
    )
    if default is not None:
        return _selected(default, PolicySource.ORG_DEFAULT)
    return None


apolicy_for = sync_to_async(policy_for)


# (organization id, creation time, API key id, requested name) → (expires, selection). The
# creation time guards against a reused id naming another organization. A named policy that does
# not exist is not remembered: the 404 costs its one query each time, as it should.
_PolicyCacheKey = tuple[int, datetime, int | None, str]
_policy_cache: dict[_PolicyCacheKey, tuple[float, SelectedPolicy | None]] = {}
POLICY_CACHE_MAX_ENTRIES = 10_000


def policy_cache_clear(*, org: Organization) -> None:
    """Forget which policy ``org``'s requests run under (after any change to its policies or
    pins; :mod:`.policy_services` calls it on every write, and again on commit)."""
    for cache_key in [k for k in _policy_cache if k[0] == org.pk]:
        _policy_cache.pop(cache_key, None)


async def apolicy_for_cached(
    *, org: Organization, api_key: ApiKey | None, requested_name: str | None
) -> SelectedPolicy | None:
    """:func:`policy_for` remembered in-process for ``GATEWAY_POLICY_CACHE_SECONDS``: the hot
    path asks it on every request, and most organizations have no policy at all (which is
    remembered too). Treat the selection as read-only: it is shared."""
    cache_key = (org.pk, org.created_at, api_key.pk if api_key else None, requested_name or "")
    now = time.monotonic()
    cached = _policy_cache.get(cache_key)
    if cached is not None and cached[0] > now:
        return cached[1]
    selected = await apolicy_for(org=org, api_key=api_key, requested_name=requested_name)
    if len(_policy_cache) >= POLICY_CACHE_MAX_ENTRIES:
        _policy_cache.clear()
    _policy_cache[cache_key] = (now + settings.GATEWAY_POLICY_CACHE_SECONDS, selected)
    return selected


# --- dry run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatedClassification:
    """A category and complexity given by the caller instead of computed by the classifier."""

    category: str
    complexity: str


@dataclass(frozen=True)
class DryRun:
    """What a request would do under the policies, without calling anything."""

    selected: SelectedPolicy | None
    classification: ClassificationLike | None
    classification_source: str  # "stated", "classifier" or "none"
    requested_model: str
    prompt_tokens: int
    decision: PolicyDecision | None

    def as_dict(self) -> dict[str, Any]:
        classification = None
        if self.classification is not None:
            classification = {
                "category": self.classification.category,
                "complexity": self.classification.complexity,
                "source": self.classification_source,
            }
        return {
            "object": "routing.dry_run",
            "requested_model": self.requested_model,
            "prompt_tokens": self.prompt_tokens,
            "policy": self.selected.as_dict() if self.selected is not None else None,
            "classification": classification,
            "decision": self.decision.as_dict() if self.decision is not None else None,
            "summary": self.summary,
        }

    @property
    def summary(self) -> str:
        if self.selected is None:
            return (
                "No routing policy applies (none named, none pinned to the key, no organization "
                f"default): the request goes to {self.requested_model!r} unchanged."
            )
        assert self.decision is not None  # noqa: S101 - set whenever a policy is selected
        if self.decision.model is None:
            return f"Policy {self.selected.policy.name!r}: {self.decision.reason}."
        chain = " → ".join(self.decision.chain)
        return f"Policy {self.selected.policy.name!r}: {self.decision.reason}; chain {chain}."


def policy_dry_run(
    *,
    org: Organization,
    messages: Sequence[ChatMessage],
    api_key: ApiKey | None = None,
    policy_name: str | None = None,
    requested_model: str = AUTO,
    classification: ClassificationLike | None = None,
    max_tokens: int | None = None,
) -> DryRun:
    """Which policy, rule and chain a request with ``messages`` would get; nothing is called.

    The category and complexity come from ``classification`` when given (to try "what if this
    were hard code"), else from the auto-router's classifier, exactly as a real request's would.
    """
    selected = policy_for(org=org, api_key=api_key, requested_name=policy_name)
    source = "stated" if classification is not None else "none"
    if classification is None and messages:
        classification = classify(messages)
        source = "classifier"
    prompt_tokens = prompt_tokens_estimate(messages=messages)
    decision = None
    if selected is not None:
        byok = set(ProviderKey.objects.filter(organization=org).values_list("provider", flat=True))
        decision = policy_route(
            policy=selected.effective,
            classification=classification,
            requested_model=requested_model,
            catalog=policy_catalog(),
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            byok_providers=byok,
        )
    return DryRun(
        selected=selected,
        classification=classification,
        classification_source=source,
        requested_model=requested_model,
        prompt_tokens=prompt_tokens,
        decision=decision,
    )
