"""The seeded catalog, its selectors, and integer cost arithmetic."""

from __future__ import annotations

import pytest

from apps.gateway.models import CatalogModel, ModelAlias, Provider, Tier
from apps.gateway.pricing import (
    cost_micros,
    prompt_tokens_estimate,
    reservation_micros,
    tokens_estimate,
    usage_estimate,
)
from apps.gateway.providers.base import ChatMessage, Usage
from apps.gateway.selectors import acatalog_resolve, catalog_list, catalog_resolve


def priced(*, input_price: int, output_price: int, cached_price: int | None = None) -> CatalogModel:
    return CatalogModel(
        id="test-model",
        provider=Provider.OPENAI,
        upstream_name="test-model",
        input_price_micros_per_mtok=input_price,
        output_price_micros_per_mtok=output_price,
        cached_input_price_micros_per_mtok=cached_price,
        context_window=1000,
        max_output_tokens=500,
        default_max_tokens=256,
    )


# --- seed and selectors -----------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_seed_covers_every_provider_with_prices_from_the_reference() -> None:
    providers = set(CatalogModel.objects.values_list("provider", flat=True))
    assert providers == set(Provider.values)
    sonnet = CatalogModel.objects.get(pk="claude-sonnet-4.5")
    assert (sonnet.input_price_micros_per_mtok, sonnet.output_price_micros_per_mtok) == (
        3_000_000,
        15_000_000,
    )
    assert sonnet.upstream_name == "claude-sonnet-4-5-20250929"
    assert sonnet.tier == Tier.FRONTIER
    nano = CatalogModel.objects.get(pk="gpt-5-nano")
    assert (nano.input_price_micros_per_mtok, nano.output_price_micros_per_mtok) == (
        50_000,
        400_000,
    )
    assert (
        CatalogModel.objects.get(pk="gemini-2.5-flash").cached_input_price_micros_per_mtok is None
    )
    for model in CatalogModel.objects.all():
        assert model.default_max_tokens <= model.max_output_tokens


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_resolve_by_id_and_alias() -> None:
    assert catalog_resolve(model_id="gpt-4o") == CatalogModel.objects.get(pk="gpt-4o")
    via_alias = catalog_resolve(model_id="claude-sonnet-4-5-20250929")
    assert via_alias is not None
    assert via_alias.id == "claude-sonnet-4.5"
    assert catalog_resolve(model_id="no-such-model") is None


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_disabled_model_resolves_to_none_by_id_and_alias() -> None:
    CatalogModel.objects.filter(pk="claude-sonnet-4.5").update(enabled=False)
    assert catalog_resolve(model_id="claude-sonnet-4.5") is None
    assert catalog_resolve(model_id="claude-sonnet-4-5") is None
    assert "claude-sonnet-4.5" not in {m.id for m in catalog_list()}
    assert "claude-sonnet-4.5" in {m.id for m in catalog_list(include_disabled=True)}


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_an_id_wins_over_an_alias_of_the_same_name() -> None:
    ModelAlias.objects.create(alias="gpt-4o", model_id="gpt-5")
    resolved = catalog_resolve(model_id="gpt-4o")
    assert resolved is not None
    assert resolved.id == "gpt-4o"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
@pytest.mark.anyio
async def test_async_resolve_matches() -> None:
    model = await acatalog_resolve(model_id="claude-haiku-4-5")
    assert model is not None
    assert model.id == "claude-haiku-4.5"
    assert await acatalog_resolve(model_id="nope") is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_catalog_list_is_ordered_by_provider_then_id() -> None:
    keys = [(m.provider, m.id) for m in catalog_list()]
    assert keys == sorted(keys)


# --- cost -------------------------------------------------------------------------------------
def test_cost_rounds_up_once_over_the_sum() -> None:
    model = priced(input_price=2_500_000, output_price=10_000_000)  # gpt-4o: $2.50 / $10
    # 1,000 in: 1,000 x 2,500,000 / 1e6 = 2,500 exactly; 500 out: 5,000 exactly.
    assert cost_micros(model=model, usage=Usage(1000, 500)) == 7_500
    # 1 in + 1 out: 2.5 + 10 = 12.5 → 13.
    assert cost_micros(model=model, usage=Usage(1, 1)) == 13
    # 1 in + 0 out: 2.5 → 3.
    assert cost_micros(model=model, usage=Usage(1, 0)) == 3
    assert cost_micros(model=model, usage=Usage(0, 0)) == 0


def test_cost_of_tiny_prices_still_charges_a_micro() -> None:
    nano = priced(input_price=50_000, output_price=400_000)  # gpt-5-nano
    # 7 x 0.05 + 3 x 0.4 = 0.35 + 1.2 = 1.55 → 2 (not 1 + 2: one rounding per request).
    assert cost_micros(model=nano, usage=Usage(7, 3)) == 2
    assert cost_micros(model=nano, usage=Usage(1, 0)) == 1


def test_cached_tokens_use_the_cached_price_or_the_input_price() -> None:
    with_cache = priced(input_price=3_000_000, output_price=15_000_000, cached_price=300_000)
    # 10,000 prompt of which 8,000 cached: 2,000 x 3 = 6,000; 8,000 x 0.3 = 2,400;
    # 100 out x 15 = 1,500.
    usage = Usage(prompt_tokens=10_000, completion_tokens=100, cached_tokens=8_000)
    assert cost_micros(model=with_cache, usage=usage) == 9_900
    no_cache_price = priced(input_price=3_000_000, output_price=15_000_000)
    assert cost_micros(model=no_cache_price, usage=usage) == 30_000 + 1_500


def test_cost_is_an_exact_integer_at_scale() -> None:
    opus = priced(input_price=15_000_000, output_price=75_000_000)
    usage = Usage(prompt_tokens=123_456_789, completion_tokens=987_654_321)
    # 123,456,789 x 15 = 1,851,851,835; 987,654,321 x 75 = 74,074,074,075.
    cost = cost_micros(model=opus, usage=usage)
    assert cost == 1_851_851_835 + 74_074_074_075
    assert isinstance(cost, int)


def test_reasoning_tokens_are_not_billed_twice() -> None:
    model = priced(input_price=1_000_000, output_price=1_000_000)
    usage = Usage(prompt_tokens=10, completion_tokens=100, reasoning_tokens=64)
    assert cost_micros(model=model, usage=usage) == 110


def test_reservation_uses_max_tokens_or_the_catalog_default() -> None:
    model = priced(input_price=2_500_000, output_price=10_000_000)  # default_max_tokens 256
    # 100 in x 2.5 = 250; 1,000 out x 10 = 10,000.
    assert reservation_micros(model=model, prompt_tokens=100, max_tokens=1000) == 10_250
    # 256 x 10 = 2,560.
    assert reservation_micros(model=model, prompt_tokens=100, max_tokens=None) == 2_810


def test_estimates_are_chars_over_four_rounded_up() -> None:
    assert tokens_estimate(text="") == 0
    assert tokens_estimate(text="abcde") == 2
    messages = [ChatMessage("system", "abcd"), ChatMessage("user", "abcdefghi")]
    assert prompt_tokens_estimate(messages=messages) == (1 + 4) + (3 + 4)
    usage = usage_estimate(messages=messages, completion_text="x" * 41)
    assert usage == Usage(prompt_tokens=12, completion_tokens=11, estimated=True)


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_seeding_again_restores_missing_models_and_keeps_operator_edits() -> None:
    from apps.gateway.services import catalog_seed

    CatalogModel.objects.filter(pk="gpt-4o").update(input_price_micros_per_mtok=1)
    CatalogModel.objects.filter(pk="gpt-5").delete()
    catalog_seed()
    assert CatalogModel.objects.get(pk="gpt-4o").input_price_micros_per_mtok == 1
    assert CatalogModel.objects.get(pk="gpt-5").input_price_micros_per_mtok == 1_250_000
