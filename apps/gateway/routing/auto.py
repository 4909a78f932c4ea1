"""``model: "auto"``: from a :class:`Classification` to the cheapest catalog model that fits.

Pure and fast: the caller passes the enabled catalog (``selectors.catalog_enabled_cached``), the
key's allowed models, the organization's BYOK providers and a health predicate
(``routing.health.healthy``); nothing here touches the database, the network or a clock, so the
same inputs always give the same decision.

The mapping from task to tier (see ``docs/routing.md`` "Auto-router"):

* classification, extraction, Q&A and chit-chat → **budget** (unless rated high complexity:
  then standard), and so does any task rated low complexity ("short tasks");
* hard maths (``math_reasoning``/high), hard code (``code``/high) and long multi-step work
  (``complex_multistep``/high, or any multi-step task over a long prompt) → **frontier**;
* everything else → **standard**.

Within the tier the order is: providers where the organization has its own key (BYOK calls cost
it no credit) first, then cheapest by input + output price per million tokens, then by id so
ties are deterministic. A model is *viable* when the key may use it, its context window holds
the prompt plus the completion budget, it can produce ``max_tokens``, and it is healthy. The
first viable model of the tier is the choice and the rest are the failover chain
(``alternatives``); an empty tier hands over to the next tier up, then — rather than failing a
request outright — to the ones below.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final

from rest_framework import status

from apps.gateway.models import CatalogModel, Tier
from llmwise.errors import ApplicationError, NotPermitted

from .classifier import Category, Classification, Complexity

AUTO_MODEL: Final = "auto"

TIER_ORDER: Final = (Tier.BUDGET, Tier.STANDARD, Tier.FRONTIER)
_BUDGET_CATEGORIES: Final = frozenset(
    {Category.CLASSIFICATION, Category.EXTRACTION, Category.QA, Category.CHITCHAT}
)
_FRONTIER_WHEN_HIGH: Final = frozenset(
    {Category.MATH_REASONING, Category.CODE, Category.COMPLEX_MULTISTEP}
)
# A multi-step task over this much prompt is "long multi-step" even at medium complexity: it
# needs a model that keeps many constraints in view at once.
LONG_MULTISTEP_PROMPT_TOKENS: Final = 8_000


class NoHealthyModel(ApplicationError):
    """Every model ``auto`` could use is failing right now (breaker open or cooling down)."""

    status_code: int = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = "upstream_error"
    code = "no_healthy_model"


@dataclass(frozen=True, slots=True)
class AutoDecision:
    """The model ``auto`` resolved to, its tier, why, and the same-tier failover chain."""

    model: CatalogModel
    tier: Tier
    reason: str
    alternatives: tuple[CatalogModel, ...]

    @property
    def chain(self) -> tuple[str, ...]:
        """Model ids in the order they should be tried."""
        return (self.model.id, *(alternative.id for alternative in self.alternatives))


def auto_tier(*, classification: Classification, prompt_tokens: int = 0) -> Tier:
    """The tier a task needs, by the default mapping (module docstring)."""
    category = classification.category
    complexity = classification.complexity
    if complexity is Complexity.HIGH and category in _FRONTIER_WHEN_HIGH:
        return Tier.FRONTIER
    if category is Category.COMPLEX_MULTISTEP and prompt_tokens >= LONG_MULTISTEP_PROMPT_TOKENS:
        return Tier.FRONTIER
    if complexity is Complexity.LOW:
        return Tier.BUDGET
    if category in _BUDGET_CATEGORIES and complexity is not Complexity.HIGH:
        return Tier.BUDGET
    return Tier.STANDARD


def _price(model: CatalogModel) -> int:
    return model.input_price_micros_per_mtok + model.output_price_micros_per_mtok


@dataclass(frozen=True, slots=True)
class _TierOrder:
    candidates: tuple[CatalogModel, ...]  # held so its id() cannot be reused while cached
    by_tier: dict[str, tuple[CatalogModel, ...]]  # cheapest first, id for ties


# The selector hands out the same catalog tuple for seconds at a time: sort it into tiers once
# per tuple, not once per request. Keyed by id() and checked by identity; a few entries suffice.
_ORDER_CACHE: dict[int, _TierOrder] = {}
_ORDER_CACHE_SIZE: Final = 8


def _tier_order(candidates: Sequence[CatalogModel]) -> _TierOrder:
    cached = _ORDER_CACHE.get(id(candidates))
    if cached is not None and cached.candidates is candidates:
        return cached
    frozen = tuple(candidates)
    order = _TierOrder(
        candidates=frozen,
        by_tier={
            tier: tuple(
                sorted(
                    (model for model in frozen if model.tier == tier),
                    key=lambda model: (_price(model), model.id),
                )
            )
            for tier in TIER_ORDER
        },
    )
    if isinstance(candidates, tuple):  # a list may change under the same id: never cache it
        if len(_ORDER_CACHE) >= _ORDER_CACHE_SIZE:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[id(candidates)] = order
    return order


def auto_choose(
    *,
    classification: Classification,
    candidates: Sequence[CatalogModel],
    allowed_models: Collection[str],
    byok_providers: Collection[str],
    prompt_tokens: int,
    max_tokens: int | None,
    healthy: Callable[[str, str], bool],
    max_alternatives: int | None = None,
) -> AutoDecision:
    """Pick the model for an ``auto`` request (see the module docstring for the rules).

    ``allowed_models`` empty means the key may use every model. ``max_tokens`` ``None`` means
    each model's own ``default_max_tokens`` (what the call service would send and reserve).
    ``max_alternatives`` caps the failover chain (the mesh's ``GATEWAY_MESH_MAX_CHAIN`` - 1):
    health is then asked only until the chain is full, which matters because each ask costs
    microseconds; ``None`` lists the whole tier. Treat ``candidates`` as read-only: a tuple is
    remembered (sorted by tier and price) for as long as it is passed in again.
    Raises :class:`NotPermitted` (403) when the key allows none of the candidates,
    ``ApplicationError`` (400, ``context_length_exceeded``) when none can hold the request, and
    :class:`NoHealthyModel` (503) when every one that could is failing.
    """
    wanted = auto_tier(classification=classification, prompt_tokens=prompt_tokens)
    by_tier = _tier_order(candidates).by_tier
    start = TIER_ORDER.index(wanted)
    servable = False  # some allowed model can hold the request, healthy or not
    # Only the tiers actually tried are walked, and health (the one call out of this function)
    # is asked only of models that pass the cheap checks.
    for tier in (*TIER_ORDER[start:], *TIER_ORDER[:start][::-1]):
        ranked: Sequence[CatalogModel] = by_tier[tier]
        if byok_providers:
            ranked = [m for m in ranked if m.provider in byok_providers] + [
                m for m in ranked if m.provider not in byok_providers
            ]  # a stable partition: each half keeps its price order
        viable: list[CatalogModel] = []
        for model in ranked:
            if allowed_models and model.id not in allowed_models:
                continue
            completion = max_tokens if max_tokens is not None else model.default_max_tokens
            if prompt_tokens + completion > model.context_window:
                continue
            if max_tokens is not None and max_tokens > model.max_output_tokens:
                continue
            servable = True
            if healthy(model.provider, model.id):
                viable.append(model)
                if max_alternatives is not None and len(viable) > max_alternatives:
                    break
        if viable:
            chosen = viable[0]
            return AutoDecision(
                model=chosen,
                tier=Tier(tier),
                reason=_reason(
                    classification=classification,
                    wanted=wanted,
                    tier=Tier(tier),
                    byok=chosen.provider in byok_providers,
                ),
                alternatives=tuple(viable[1:]),
            )
    if servable:
        raise NoHealthyModel(
            "Every model the auto-router could use is failing right now; try again shortly."
        )
    if allowed_models and not any(model.id in allowed_models for model in candidates):
        raise NotPermitted(
            "This API key may not use any model the auto-router can choose from.",
            code="model_not_allowed",
            param="model",
        )
    raise ApplicationError(
        f"No model the auto-router may use can hold {prompt_tokens} prompt tokens plus "
        f"{'the completion' if max_tokens is None else max_tokens} in its context window.",
        code="context_length_exceeded",
        param="messages",
    )


def _reason(*, classification: Classification, wanted: Tier, tier: Tier, byok: bool) -> str:
    """A short line for the response and the request log, e.g.
    ``qa, low complexity → budget tier: cheapest healthy model``."""
    head = f"{classification.category}, {classification.complexity} complexity → {wanted} tier"
    if tier != wanted:
        head = f"{head} (none viable) → {tier} tier"
    pick = "cheapest healthy model with your own key" if byok else "cheapest healthy model"
    return f"{head}: {pick}"
