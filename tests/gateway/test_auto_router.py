"""``auto_choose``: tier mapping, allowed models, BYOK, context window, health, fallback, order.

Most tests run against the seeded catalog (the real candidates, through the cached selector the
call service uses); a few build catalog rows in memory to pin down one rule exactly.
``healthy`` is the injected health predicate: a plain function here, ``routing.health.healthy``
in production (one test uses that too).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from apps.gateway.models import CatalogModel, Tier
from apps.gateway.routing import health
from apps.gateway.routing.auto import (
    AutoDecision,
    NoHealthyModel,
    auto_choose,
    auto_tier,
)
from apps.gateway.routing.classifier import Category, Classification, Complexity
from apps.gateway.selectors import (
    acatalog_enabled_cached,
    catalog_cache_clear,
    catalog_enabled_cached,
)
from llmwise.errors import ApplicationError, NotPermitted

# Seeded budget tier, cheapest first by input + output USD/Mtok (catalog_data.py).
BUDGET_BY_PRICE = [
    "mistral-small",  # 0.10 + 0.30
    "gpt-5-nano",  # 0.05 + 0.40
    "gemini-2.5-flash-lite",  # 0.10 + 0.40
    "meta-llama/llama-3.3-70b-instruct",  # 0.13 + 0.40
    "deepseek-chat",  # 0.28 + 0.42
    "gpt-4o-mini",  # 0.15 + 0.60
    "llama-3.3-70b",  # 0.59 + 0.79
    "together/llama-3.3-70b-instruct-turbo",  # 0.88 + 0.88
    "claude-haiku-4.5",  # 1.00 + 5.00
]
# Frontier: gemini-2.5-pro and gpt-5 cost the same (1.25 + 10), so the id breaks the tie; so do
# the three at 3 + 15.
FRONTIER_BY_PRICE = [
    "gemini-2.5-pro",
    "gpt-5",
    "anthropic/claude-sonnet-4.5",
    "claude-sonnet-4.5",
    "grok-4",
    "claude-opus-4.1",
]


def task(category: Category, complexity: Complexity) -> Classification:
    return Classification(category=category, complexity=complexity, signals=(), confidence=1.0)


def all_healthy(provider: str, model: str) -> bool:
    return True


def ids(models: tuple[CatalogModel, ...]) -> list[str]:
    return [model.id for model in models]


@pytest.fixture
def candidates(catalog: None) -> Iterator[tuple[CatalogModel, ...]]:
    catalog_cache_clear()  # the cache is per process: never reuse another test's catalog
    yield catalog_enabled_cached()
    catalog_cache_clear()


def choose(
    candidates: tuple[CatalogModel, ...] | list[CatalogModel],
    classification: Classification,
    *,
    allowed_models: tuple[str, ...] = (),
    byok_providers: frozenset[str] = frozenset(),
    prompt_tokens: int = 500,
    max_tokens: int | None = 1_000,
    healthy: object = all_healthy,
) -> AutoDecision:
    return auto_choose(
        classification=classification,
        candidates=candidates,
        allowed_models=allowed_models,
        byok_providers=byok_providers,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        healthy=healthy,  # type: ignore[arg-type]
    )


# --- tier mapping -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("category", "complexity", "prompt_tokens", "tier"),
    [
        (Category.CLASSIFICATION, Complexity.MEDIUM, 0, Tier.BUDGET),
        (Category.EXTRACTION, Complexity.MEDIUM, 0, Tier.BUDGET),
        (Category.QA, Complexity.MEDIUM, 0, Tier.BUDGET),
        (Category.CHITCHAT, Complexity.LOW, 0, Tier.BUDGET),
        (Category.QA, Complexity.HIGH, 0, Tier.STANDARD),
        # short tasks of any kind
        (Category.TRANSLATION, Complexity.LOW, 0, Tier.BUDGET),
        (Category.CREATIVE_WRITING, Complexity.LOW, 0, Tier.BUDGET),
        (Category.CODE, Complexity.LOW, 0, Tier.BUDGET),
        # the rest
        (Category.SUMMARIZATION, Complexity.MEDIUM, 0, Tier.STANDARD),
        (Category.TRANSLATION, Complexity.HIGH, 0, Tier.STANDARD),
        (Category.CREATIVE_WRITING, Complexity.HIGH, 0, Tier.STANDARD),
        (Category.CODE, Complexity.MEDIUM, 0, Tier.STANDARD),
        (Category.MATH_REASONING, Complexity.MEDIUM, 0, Tier.STANDARD),
        (Category.COMPLEX_MULTISTEP, Complexity.MEDIUM, 0, Tier.STANDARD),
        # hard reasoning, hard code, long multi-step
        (Category.MATH_REASONING, Complexity.HIGH, 0, Tier.FRONTIER),
        (Category.CODE, Complexity.HIGH, 0, Tier.FRONTIER),
        (Category.COMPLEX_MULTISTEP, Complexity.HIGH, 0, Tier.FRONTIER),
        (Category.COMPLEX_MULTISTEP, Complexity.MEDIUM, 8_000, Tier.FRONTIER),
    ],
)
def test_tier_mapping(
    category: Category, complexity: Complexity, prompt_tokens: int, tier: Tier
) -> None:
    assert auto_tier(classification=task(category, complexity), prompt_tokens=prompt_tokens) == tier


def test_budget_task_gets_the_cheapest_budget_model_and_the_tier_as_failover_chain(
    candidates: tuple[CatalogModel, ...],
) -> None:
    decision = choose(candidates, task(Category.QA, Complexity.LOW))

    assert decision.tier == Tier.BUDGET
    assert decision.model.id == BUDGET_BY_PRICE[0]
    assert ids(decision.alternatives) == BUDGET_BY_PRICE[1:]
    assert decision.chain == tuple(BUDGET_BY_PRICE)
    assert decision.reason == "qa, low complexity → budget tier: cheapest healthy model"


def test_hard_code_goes_to_the_frontier_tier(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(candidates, task(Category.CODE, Complexity.HIGH))

    assert decision.tier == Tier.FRONTIER
    assert decision.chain == tuple(FRONTIER_BY_PRICE)
    assert decision.reason.startswith("code, high complexity → frontier tier")


def test_standard_tier_for_the_rest(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(candidates, task(Category.SUMMARIZATION, Complexity.MEDIUM))

    assert decision.tier == Tier.STANDARD
    assert decision.model.id == "gpt-5-mini"  # 0.25 + 2.00, cheapest standard model
    assert all(model.tier == Tier.STANDARD for model in decision.alternatives)


# --- the key's allowed models -------------------------------------------------------------------
def test_only_models_the_key_allows(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(
        candidates,
        task(Category.QA, Complexity.LOW),
        allowed_models=("claude-sonnet-4.5", "gpt-4o-mini", "deepseek-chat"),
    )

    assert decision.model.id == "deepseek-chat"
    assert ids(decision.alternatives) == ["gpt-4o-mini"]  # same tier only


def test_a_key_allowing_only_higher_tiers_falls_up(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(
        candidates, task(Category.QA, Complexity.LOW), allowed_models=("gpt-5", "gpt-4.1")
    )

    assert decision.tier == Tier.STANDARD
    assert decision.model.id == "gpt-4.1"
    assert decision.alternatives == ()
    assert decision.reason == (
        "qa, low complexity → budget tier (none viable) → standard tier: cheapest healthy model"
    )


def test_a_key_allowing_no_candidate_is_refused(candidates: tuple[CatalogModel, ...]) -> None:
    with pytest.raises(NotPermitted) as refused:
        choose(candidates, task(Category.QA, Complexity.LOW), allowed_models=("no-such-model",))

    assert refused.value.status_code == 403
    assert refused.value.code == "model_not_allowed"


# --- BYOK ---------------------------------------------------------------------------------------
def test_providers_with_the_orgs_own_key_come_first(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(
        candidates, task(Category.QA, Complexity.LOW), byok_providers=frozenset({"anthropic"})
    )

    # The dearest budget model, but the org pays its provider directly: no credit spent.
    assert decision.model.id == "claude-haiku-4.5"
    assert ids(decision.alternatives) == BUDGET_BY_PRICE[:-1]
    assert decision.reason.endswith("cheapest healthy model with your own key")


def test_byok_models_are_cheapest_first_among_themselves(
    candidates: tuple[CatalogModel, ...],
) -> None:
    decision = choose(
        candidates,
        task(Category.QA, Complexity.LOW),
        byok_providers=frozenset({"openai", "groq"}),
    )

    assert decision.chain[:3] == ("gpt-5-nano", "gpt-4o-mini", "llama-3.3-70b")
    assert decision.chain[3:] == tuple(
        model_id
        for model_id in BUDGET_BY_PRICE
        if model_id not in {"gpt-5-nano", "gpt-4o-mini", "llama-3.3-70b"}
    )


def test_byok_never_pulls_a_model_from_another_tier(candidates: tuple[CatalogModel, ...]) -> None:
    decision = choose(
        candidates, task(Category.CODE, Complexity.HIGH), byok_providers=frozenset({"mistral"})
    )

    assert decision.tier == Tier.FRONTIER
    assert "mistral-small" not in decision.chain


# --- context window and output limit ------------------------------------------------------------
def test_models_whose_context_cannot_hold_the_request_are_skipped(
    candidates: tuple[CatalogModel, ...],
) -> None:
    decision = choose(
        candidates, task(Category.QA, Complexity.LOW), prompt_tokens=150_000, max_tokens=1_000
    )

    # 128k/131k-context budget models drop out; 200k, 400k and 1M ones stay.
    assert decision.chain == ("gpt-5-nano", "gemini-2.5-flash-lite", "claude-haiku-4.5")


def test_max_tokens_beyond_a_models_output_limit_skips_it(
    candidates: tuple[CatalogModel, ...],
) -> None:
    decision = choose(candidates, task(Category.QA, Complexity.LOW), max_tokens=20_000)

    assert "gpt-4o-mini" not in decision.chain  # 16,384 output tokens at most
    assert "mistral-small" in decision.chain


def test_without_max_tokens_each_models_default_budget_must_fit() -> None:
    roomy = CatalogModel(
        id="roomy",
        provider="openai",
        upstream_name="roomy",
        tier=Tier.BUDGET,
        input_price_micros_per_mtok=2_000_000,
        output_price_micros_per_mtok=2_000_000,
        context_window=100_000,
        max_output_tokens=8_000,
        default_max_tokens=4_000,
    )
    tight = CatalogModel(
        id="tight",
        provider="mistral",
        upstream_name="tight",
        tier=Tier.BUDGET,
        input_price_micros_per_mtok=100_000,
        output_price_micros_per_mtok=100_000,
        context_window=10_000,
        max_output_tokens=8_000,
        default_max_tokens=4_000,
    )
    qa = task(Category.QA, Complexity.LOW)

    assert choose([tight, roomy], qa, prompt_tokens=7_000, max_tokens=None).chain == ("roomy",)
    assert choose([tight, roomy], qa, prompt_tokens=7_000, max_tokens=1_000).chain == (
        "tight",
        "roomy",
    )


def test_nothing_can_hold_the_request(candidates: tuple[CatalogModel, ...]) -> None:
    with pytest.raises(ApplicationError) as too_big:
        choose(candidates, task(Category.QA, Complexity.LOW), prompt_tokens=5_000_000)

    assert too_big.value.status_code == 400
    assert too_big.value.code == "context_length_exceeded"


# --- health -------------------------------------------------------------------------------------
def test_unhealthy_models_are_skipped_and_left_out_of_the_chain(
    candidates: tuple[CatalogModel, ...],
) -> None:
    down = {("mistral", "mistral-small"), ("openai", "gpt-5-nano")}
    asked: list[tuple[str, str]] = []

    def healthy(provider: str, model: str) -> bool:
        asked.append((provider, model))
        return (provider, model) not in down

    decision = choose(candidates, task(Category.QA, Complexity.LOW), healthy=healthy)

    assert decision.model.id == "gemini-2.5-flash-lite"
    assert "mistral-small" not in decision.chain
    assert "gpt-5-nano" not in decision.chain
    assert decision.chain == tuple(
        m for m in BUDGET_BY_PRICE if m not in {"mistral-small", "gpt-5-nano"}
    )
    # Health is asked only for the tier being tried (it is the one call out of this function).
    assert {model for _provider, model in asked} == set(BUDGET_BY_PRICE)


def test_a_tier_that_is_all_down_hands_over_to_the_next_tier_up(
    candidates: tuple[CatalogModel, ...],
) -> None:
    budget = {model.id for model in candidates if model.tier == Tier.BUDGET}
    decision = choose(
        candidates,
        task(Category.EXTRACTION, Complexity.LOW),
        healthy=lambda provider, model: model not in budget,
    )

    assert decision.tier == Tier.STANDARD
    assert decision.model.id == "gpt-5-mini"
    assert "(none viable) → standard tier" in decision.reason


def test_a_frontier_task_with_the_frontier_down_gets_the_best_there_is(
    candidates: tuple[CatalogModel, ...],
) -> None:
    # Nothing above frontier: a standard model answers rather than a 503.
    decision = choose(
        candidates,
        task(Category.MATH_REASONING, Complexity.HIGH),
        healthy=lambda provider, model: (
            provider not in {"openai", "anthropic", "gemini", "xai"}
            and model != "anthropic/claude-sonnet-4.5"
        ),
    )

    assert decision.tier == Tier.BUDGET  # the standard tier is all openai / gemini here
    assert decision.reason.startswith("math_reasoning, high complexity → frontier tier (none")


def test_everything_down_is_one_clear_503(candidates: tuple[CatalogModel, ...]) -> None:
    with pytest.raises(NoHealthyModel) as unavailable:
        choose(candidates, task(Category.QA, Complexity.LOW), healthy=lambda p, m: False)

    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "no_healthy_model"


def test_the_live_health_predicate_plugs_in(candidates: tuple[CatalogModel, ...]) -> None:
    health.health_local_clear()
    decision = choose(candidates, task(Category.QA, Complexity.LOW), healthy=health.healthy)

    assert decision.model.id == BUDGET_BY_PRICE[0]


# --- determinism --------------------------------------------------------------------------------
def test_the_decision_does_not_depend_on_candidate_order(
    candidates: tuple[CatalogModel, ...],
) -> None:
    expected = {
        complexity: choose(candidates, task(Category.CODE, complexity)) for complexity in Complexity
    }
    shuffled = list(candidates)
    rng = random.Random(6)
    for _ in range(20):
        rng.shuffle(shuffled)
        for complexity, decision in expected.items():
            again = choose(shuffled, task(Category.CODE, complexity))
            assert again.chain == decision.chain
            assert again.reason == decision.reason


# --- the cached catalog selector ---------------------------------------------------------------
def test_catalog_cache_serves_the_enabled_catalog_for_a_few_seconds(catalog: None) -> None:
    catalog_cache_clear()
    first = catalog_enabled_cached()
    assert len(first) == CatalogModel.objects.filter(enabled=True).count()
    assert all(model.enabled for model in first)
    order = [(model.provider, model.id) for model in first]
    assert order == sorted(order)

    CatalogModel.objects.filter(pk="mistral-small").update(enabled=False)
    assert catalog_enabled_cached() is first  # within the TTL: no query, same tuple
    assert "mistral-small" not in [m.id for m in catalog_enabled_cached(max_age_seconds=0)]

    catalog_cache_clear()
    refreshed = async_to_sync(acatalog_enabled_cached)()
    assert "mistral-small" not in [m.id for m in refreshed]
    assert catalog_enabled_cached() is refreshed
    catalog_cache_clear()


def test_a_capped_chain_asks_health_only_until_it_is_full(
    candidates: tuple[CatalogModel, ...],
) -> None:
    asked: list[str] = []

    def healthy(provider: str, model: str) -> bool:
        asked.append(model)
        return model != "gpt-5-nano"

    decision = auto_choose(
        classification=task(Category.QA, Complexity.LOW),
        candidates=candidates,
        allowed_models=(),
        byok_providers=frozenset(),
        prompt_tokens=500,
        max_tokens=1_000,
        healthy=healthy,
        max_alternatives=2,
    )

    assert decision.chain == (
        "mistral-small",
        "gemini-2.5-flash-lite",
        "meta-llama/llama-3.3-70b-instruct",
    )
    assert asked == BUDGET_BY_PRICE[:4]  # the unhealthy one was asked, nothing after the third
