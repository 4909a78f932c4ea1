"""The aggregation + recommendation job over generated histories with known answers."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.accounts import services as account_services
from apps.optimizer.models import OptimizerRun, Recommendation
from apps.optimizer.services import recommendation_dismiss
from tests.conftest import Personas

from .conftest import Keys
from .history import CHEAP, CURRENT, DRIFTING, FLAKY, rows

pytestmark = pytest.mark.django_db

Kind = Recommendation.Kind


def _run(personas: Personas) -> str:
    out = StringIO()
    call_command("run_optimizer", "--org", personas.org.slug, stdout=out)
    return out.getvalue()


def _new(personas: Personas) -> dict[tuple[str, str], Recommendation]:
    return {
        (r.kind, r.target): r
        for r in Recommendation.objects.filter(organization=personas.org, status="new")
    }


def test_known_answers(personas: Personas, history: Keys) -> None:
    output = _run(personas)
    assert "recommendations" in output
    recs = _new(personas)

    primary = recs[(Kind.PRIMARY_MODEL, "classification")]
    assert primary.payload["model"] == CHEAP  # cheaper, meets every threshold
    assert primary.payload["current_model"] == CURRENT
    assert FLAKY not in primary.payload["fallbacks"]
    assert primary.evidence["quality"] == "unverified"  # no judged replays yet
    assert 0 < primary.confidence <= 0.5
    assert primary.monthly_saving_micros > 0
    assert 0 < primary.saving_percent < 100
    flaky_row = next(m for m in primary.evidence["models"] if m["model"] == FLAKY)
    assert flaky_row["eligible"] is False
    assert "error rate" in flaky_row["reason"]

    chain = recs[(Kind.FALLBACK_CHAIN, "classification")]
    assert chain.payload == {"category": "classification", "model": CURRENT, "fallbacks": [CHEAP]}
    assert chain.evidence["current_chain"] == [CURRENT, FLAKY]
    assert [d["model"] for d in chain.evidence["dropped"]] == [FLAKY]
    assert chain.evidence["dropped"][0]["error_rate"] == pytest.approx(0.2)

    policy = recs[(Kind.ROUTING_POLICY, "default")]
    rule = policy.payload["document"]["rules"][0]
    assert rule["when"] == {"category": ["classification"]}
    assert rule["model"] == CHEAP
    assert rule["fallbacks"] == [CURRENT]

    rising = recs[(Kind.RISING_ERRORS, DRIFTING)]
    assert rising.evidence["recent_error_rate"] > 0.3
    assert rising.evidence["baseline_error_rate"] == 0
    assert (Kind.RISING_ERRORS, FLAKY) not in recs  # bad all along is not "rising"

    runaway = recs[(Kind.RUNAWAY_SPEND, f"api_key:{history.runaway.pk}")]
    assert runaway.payload["name"] == "batch"
    assert runaway.evidence["this_week_micros"] > 100 * runaway.evidence["previous_week_micros"]
    assert (Kind.RUNAWAY_SPEND, f"api_key:{history.main.pk}") not in recs

    cache = recs[(Kind.CACHE_OPPORTUNITY, CHEAP)]
    assert cache.evidence["duplicate_requests"] == 14
    assert cache.evidence["top_repeats"] == [15]
    assert cache.monthly_saving_micros > 0

    # Categories whose traffic is already on the best model get nothing.
    assert not any(target == "summarization" for _kind, target in recs)
    run = OptimizerRun.objects.get(organization=personas.org)
    assert run.status == "done"
    assert run.rows_scanned > 700
    assert any(cell["model"] == FLAKY for cell in run.stats["cells"])


def test_running_twice_creates_no_duplicates(personas: Personas, history: Keys) -> None:
    _run(personas)
    first = {(r.kind, r.target): r.pk for r in Recommendation.objects.all()}
    _run(personas)
    assert {(r.kind, r.target): r.pk for r in Recommendation.objects.all()} == first
    assert OptimizerRun.objects.filter(organization=personas.org).count() == 2
    assert OptimizerRun.objects.order_by("-id").first().updated == len(first)


def test_changed_advice_supersedes_and_dismissed_stays_dismissed(
    personas: Personas, history: Keys
) -> None:
    _run(personas)
    recs = _new(personas)
    cache = recs[(Kind.CACHE_OPPORTUNITY, CHEAP)]
    recommendation_dismiss(org=personas.org, actor=personas.admin, recommendation_id=cache.pk)
    # The cheap model starts failing: it is no longer recommended for classification.
    rows(personas.org, count=60, model=CHEAP, error_every=2, api_key=history.main)
    _run(personas)
    recs = _new(personas)
    assert (Kind.CACHE_OPPORTUNITY, CHEAP) not in recs  # dismissed: not proposed again
    old = Recommendation.objects.get(
        kind=Kind.PRIMARY_MODEL, target="classification", status="superseded"
    )
    assert old.payload["model"] == CHEAP
    assert (Kind.PRIMARY_MODEL, "classification") not in recs or (
        recs[(Kind.PRIMARY_MODEL, "classification")].payload["model"] != CHEAP
    )


def test_zero_retention_rows_are_never_hashed(
    personas: Personas, keys: Keys, catalog: None
) -> None:
    quiet = account_services.api_key_create(
        org=personas.org, name="private", created_by=None, zero_retention=True
    ).api_key
    # Zero-retention rows carry no text at all...
    rows(personas.org, count=30, model=CHEAP, category="chitchat", api_key=quiet, prompt="same")
    # ...and rows of a key switched to zero retention later are not hashed either.
    old = [{"role": "user", "content": "same old question"}]
    rows(
        personas.org,
        count=30,
        model=CHEAP,
        category="chitchat",
        api_key=quiet,
        prompt_tokens=9,
        **{"prompt": old, "completion": "answer"},
    )
    _run(personas)
    assert not Recommendation.objects.filter(kind=Kind.CACHE_OPPORTUNITY).exists()
    run = OptimizerRun.objects.get(organization=personas.org)
    assert run.stats["not_hashed"] == 60


def test_other_orgs_traffic_never_counts(personas: Personas, history: Keys) -> None:
    out = StringIO()
    call_command("run_optimizer", "--org", personas.other_org.slug, stdout=out)
    assert not Recommendation.objects.filter(organization=personas.other_org).exists()
    assert OptimizerRun.objects.get(organization=personas.other_org).rows_scanned == 0


def test_command_refuses_an_unknown_org(db: None) -> None:
    with pytest.raises(CommandError, match="No organization"):
        call_command("run_optimizer", "--org", "nope", stdout=StringIO())


def test_old_traffic_outside_the_window_is_ignored(
    personas: Personas, keys: Keys, catalog: None
) -> None:
    rows(personas.org, count=50, model=CURRENT, ago=timedelta(days=20))
    _run(personas)
    assert OptimizerRun.objects.get(organization=personas.org).rows_scanned == 0


@pytest.mark.usefixtures("catalog")
def test_time_to_first_token_is_aggregated_for_streamed_answers(personas: Personas) -> None:
    from django.utils import timezone

    from apps.optimizer.aggregation import traffic_scan

    rows(personas.org, count=20, model=CHEAP, ttft_ms=120, stream=True)
    rows(personas.org, count=10, model=CHEAP)  # not streamed: no TTFT
    now = timezone.now()
    traffic = traffic_scan(org=personas.org, start=now - timedelta(days=1), end=now)
    summary = traffic.cells[(CHEAP, "classification")].summary()
    assert summary["requests"] == 30
    assert summary["ttft_p50_ms"] is not None
    assert 100 <= summary["ttft_p50_ms"] <= 150  # histogram buckets: within one bucket's width
