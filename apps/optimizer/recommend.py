"""From aggregated traffic to recommendation drafts. Pure: no database, no clock.

Each draft carries what to change (``payload``), the numbers it rests on (``evidence``), an
estimated monthly saving and a confidence. The rules, in short (docs/optimizer.md has the why):

- **primary model** per task category: the cheapest model, priced on the category's own token
  mix, among those with enough traffic in it whose error rate and p95 latency meet the org's
  thresholds and that the replay lab's judge has not found worse; without judged replays the
  quality is *unverified* and the confidence is capped lower.
- **fallback chain** per category: the primary, then the other models that served the category
  reliably, by attempt failure rate then p95 latency; models failing above the threshold are
  dropped (and listed with their numbers).
- **routing policy**: the two above as one policy document (rules by category), valid for
  :func:`apps.gateway.routing.policies.policy_document_validate`.
- **flags**: a model whose error rate of the last days rose well above its own baseline; a key
  whose spend this week is far above last week's; repeated identical requests (cacheable).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apps.gateway.models import CatalogModel
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.routing.policies import CATEGORIES

from .aggregation import P95, Cell, KeySpend, Traffic, day_buckets
from .models import DEFAULT_ERROR_RISE_FACTOR, OptimizerSettings, Recommendation

Kind = Recommendation.Kind
DAYS_PER_MONTH = 30
RECENT_DAYS = 3  # rising errors: the last days (today included) against the rest of the window
POLICY_TARGET = "default"
RULE_PREFIX = "optimizer: "
# Confidence caps: a cheaper model the judge has not compared stays a hypothesis.
CONFIDENCE_VERIFIED = 0.9
CONFIDENCE_UNVERIFIED = 0.5
CONFIDENCE_FLAG = 0.8
CONFIDENCE_CACHE = 0.7  # exact duplicates, but sampling settings are not logged


@dataclass(frozen=True)
class Quality:
    """The replay lab's verdicts for one candidate model in one category."""

    judged: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def not_worse_rate(self) -> float | None:
        return (self.wins + self.ties) / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "judged": self.judged,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "not_worse_rate": None
            if self.not_worse_rate is None
            else round(self.not_worse_rate, 3),
        }


@dataclass
class Draft:
    kind: str
    target: str
    title: str
    payload: dict[str, Any]
    evidence: dict[str, Any]
    monthly_saving_micros: int = 0
    saving_percent: float | None = None
    confidence: float = 0.0

    @property
    def fingerprint(self) -> str:
        """Same kind, target and change ⇒ same recommendation (its numbers may move)."""
        canonical = json.dumps(
            [self.kind, self.target, self.payload], sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """Everything the rules read, gathered by the job."""

    traffic: Traffic
    settings: OptimizerSettings
    catalog: Mapping[str, CatalogModel]  # enabled models by id
    quality: Mapping[tuple[str, str], Quality] = field(default_factory=dict)
    daily_errors: Mapping[str, Mapping[datetime, tuple[int, int]]] = field(default_factory=dict)
    key_spend: list[KeySpend] = field(default_factory=list)
    key_labels: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # id → (name, prefix)
    max_chain: int = 5
    # Says whether a policy document would be accepted (the gateway's validation).
    validate_policy: Callable[[dict[str, Any]], bool] | None = None

    @property
    def month_factor(self) -> float:
        return DAYS_PER_MONTH / self.traffic.observed_days


def _priced(model: CatalogModel, prompt_tokens: int, completion_tokens: int) -> int:
    return cost_micros(model=model, usage=Usage(prompt_tokens, completion_tokens))


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole > 0 else None


def _volume_factor(requests: int, min_requests: int) -> float:
    """0.5 at the minimum volume, approaching 1 with five times as much."""
    return min(1.0, 0.5 + 0.5 * requests / (5 * min_requests))


@dataclass
class _CategoryChoice:
    category: str
    current: str
    best: str
    fallbacks: list[str]
    dropped: list[dict[str, Any]]
    verified: bool
    draft: Draft | None


def _eligible(
    inputs: Inputs, model: str, cell: Cell, category: str
) -> tuple[bool, str | None, Quality]:
    settings = inputs.settings
    quality = inputs.quality.get((model, category), Quality())
    if model not in inputs.catalog:
        return False, "not in the enabled catalog", quality
    if cell.requests < settings.min_requests and quality.judged < settings.min_judged:
        return False, f"fewer than {settings.min_requests} requests", quality
    if cell.requests >= settings.min_requests and cell.error_rate > settings.max_error_rate:
        return (
            False,
            f"error rate {cell.error_rate:.1%} over {settings.max_error_rate:.1%}",
            quality,
        )
    p95 = cell.percentile(P95)
    if p95 is not None and p95 > settings.max_p95_latency_ms:
        return False, f"p95 latency {p95} ms over {settings.max_p95_latency_ms} ms", quality
    rate = quality.not_worse_rate
    if quality.judged >= settings.min_judged and rate is not None and rate < settings.min_quality:
        return False, f"judged as good as the original in only {rate:.0%} of replays", quality
    return True, None, quality


def _chain(
    inputs: Inputs, *, primary: str, category: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """Fallbacks for ``primary`` in ``category``: reliable models that served it, best first."""
    settings = inputs.settings
    totals = inputs.traffic.model_totals()
    candidates: list[tuple[float, int, str]] = []
    dropped: list[dict[str, Any]] = []
    for model, cell in inputs.traffic.cells_of(category).items():
        if model == primary or model not in inputs.catalog or cell.requests == 0:
            continue
        reliability = inputs.traffic.reliability.get(model)
        failure_rate = reliability.failure_rate if reliability is not None else cell.error_rate
        failure_rate = max(failure_rate, cell.error_rate)
        if failure_rate > settings.max_error_rate:
            dropped.append(
                {
                    "model": model,
                    "reason": "unreliable",
                    "error_rate": round(failure_rate, 4),
                    "requests": cell.requests,
                }
            )
            continue
        p95 = totals[model].percentile(P95) or 0
        # Failure rates within half a point are equally reliable: then the faster one first.
        candidates.append((round(failure_rate * 200) / 200, p95, model))
    ordered = [model for _rate, _p95, model in sorted(candidates)]
    return ordered[: max(inputs.max_chain - 1, 0)], dropped


def _primary(inputs: Inputs, category: str) -> _CategoryChoice | None:
    settings = inputs.settings
    cells = inputs.traffic.cells_of(category)
    total = sum(cell.requests for cell in cells.values())
    if total < settings.min_requests:
        return None
    current = max(cells, key=lambda m: (cells[m].requests, m))
    prompt = sum(cell.prompt_tokens for cell in cells.values())
    completion = sum(cell.completion_tokens for cell in cells.values())
    ok = sum(cell.ok_requests for cell in cells.values())
    actual = sum(cell.cost_micros for cell in cells.values())
    # Models judged in the replay lab for this category are candidates even with little traffic.
    judged_models = {m for (m, c) in inputs.quality if c == category}
    rows = []
    eligible: list[tuple[int, int, str, bool]] = []
    for model in sorted(set(cells) | judged_models):
        cell = cells.get(model, Cell())
        ok_, reason, quality = _eligible(inputs, model, cell, category)
        catalog_model = inputs.catalog.get(model)
        priced = _priced(catalog_model, prompt, completion) if catalog_model else None
        verified = (
            quality.judged >= settings.min_judged
            and quality.not_worse_rate is not None
            and quality.not_worse_rate >= settings.min_quality
        )
        rows.append(
            {
                "model": model,
                **cell.summary(),
                "priced_category_cost_micros": priced,
                "priced_cost_per_request_micros": priced // ok
                if priced is not None and ok
                else None,
                "eligible": ok_,
                "reason": reason,
                "quality": quality.as_dict(),
            }
        )
        if ok_ and priced is not None:
            eligible.append((priced, cell.percentile(P95) or 0, model, verified))
    if not eligible:
        return None
    priced_best, _p95, best, verified = min(eligible)
    fallbacks, dropped = _chain(inputs, primary=best, category=category)
    saving = int((actual - priced_best) * inputs.month_factor)
    choice = _CategoryChoice(category, current, best, fallbacks, dropped, verified, None)
    best_share = cells[best].requests / total if best in cells else 0.0
    if saving <= 0 or best_share >= 0.95:
        return choice
    best_cell = cells.get(best, Cell())
    label = category.replace("_", " ")
    cap = CONFIDENCE_VERIFIED if verified else CONFIDENCE_UNVERIFIED
    volume = max(best_cell.requests, inputs.quality.get((best, category), Quality()).judged)
    confidence = round(cap * _volume_factor(volume, settings.min_requests), 2)
    choice.draft = Draft(
        kind=Kind.PRIMARY_MODEL,
        target=category,
        title=(
            f"Use {best} for {label} (now mostly {current})"
            if best != current
            else f"Send all {label} to {best} (now {best_share:.0%} of it)"
        ),
        payload={
            "category": category,
            "model": best,
            "fallbacks": fallbacks,
            "current_model": current,
        },
        evidence={
            "window_days": round(inputs.traffic.observed_days, 1),
            "category_requests": total,
            "quality": "verified" if verified else "unverified",
            "current_monthly_cost_micros": int(actual * inputs.month_factor),
            "candidate_monthly_cost_micros": int(priced_best * inputs.month_factor),
            "models": rows,
            "dropped_from_chain": dropped,
            "pricing": "the category's own token mix priced at each model's catalog prices",
        },
        monthly_saving_micros=saving,
        saving_percent=_percent(saving, int(actual * inputs.month_factor)),
        confidence=confidence,
    )
    return choice


def _fallback_draft(inputs: Inputs, choice: _CategoryChoice) -> Draft | None:
    """The chain the category's traffic should get, when it differs from what it gets now."""
    category = choice.category
    observed = inputs.traffic.chains.get(category)
    current_chain = list(observed.most_common(1)[0][0]) if observed else []
    # The chain to propose keeps the current primary: choosing another primary is the
    # primary-model recommendation's job, and both can be applied independently.
    fallbacks, dropped = _chain(inputs, primary=choice.current, category=category)
    proposed = [choice.current, *fallbacks]
    if not fallbacks or proposed == current_chain:
        return None
    cells = inputs.traffic.cells_of(category)
    failovers = sum(cell.fallback_answers for cell in cells.values())
    total = sum(cell.requests for cell in cells.values())
    attempts = sum(
        inputs.traffic.reliability[m].attempts for m in proposed if m in inputs.traffic.reliability
    )
    models = []
    for model in sorted(cells):
        reliability = inputs.traffic.reliability.get(model)
        models.append(
            {
                "model": model,
                **cells[model].summary(),
                "attempts": reliability.attempts if reliability else 0,
                "attempt_failures": reliability.failures if reliability else 0,
                "attempt_failure_rate": round(reliability.failure_rate, 4) if reliability else 0.0,
            }
        )
    return Draft(
        kind=Kind.FALLBACK_CHAIN,
        target=category,
        title=f"Fallback chain for {category.replace('_', ' ')}: {' → '.join(proposed)}",
        payload={"category": category, "model": choice.current, "fallbacks": fallbacks},
        evidence={
            "window_days": round(inputs.traffic.observed_days, 1),
            "category_requests": total,
            "current_chain": current_chain,
            "failover_rate": round(failovers / total, 4) if total else 0.0,
            "dropped": dropped,
            "models": models,
            "ordering": "attempt failure rate (0.5-point steps), then p95 latency",
        },
        confidence=round(
            CONFIDENCE_FLAG * _volume_factor(attempts, inputs.settings.min_requests), 2
        ),
    )


def policy_rule(*, category: str, model: str, fallbacks: list[str]) -> dict[str, Any]:
    """One policy rule routing ``category`` to ``model`` then ``fallbacks``."""
    rule: dict[str, Any] = {
        "name": f"{RULE_PREFIX}{category}",
        "when": {"category": [category]},
        "model": model,
    }
    if fallbacks:
        rule["fallbacks"] = list(fallbacks)
    return rule


def _policy_draft(inputs: Inputs, choices: list[_CategoryChoice]) -> Draft | None:
    rules = []
    saving = 0
    confidences = []
    for choice in choices:
        if choice.draft is not None:
            rules.append(
                policy_rule(category=choice.category, model=choice.best, fallbacks=choice.fallbacks)
            )
            saving += choice.draft.monthly_saving_micros
            confidences.append(choice.draft.confidence)
    if not rules:
        return None
    document: dict[str, Any] = {"applies_to": "all", "rules": rules}
    if inputs.validate_policy is not None and not inputs.validate_policy(document):
        return None
    current_cost = sum(
        c.draft.evidence["current_monthly_cost_micros"] for c in choices if c.draft is not None
    )
    return Draft(
        kind=Kind.ROUTING_POLICY,
        target=POLICY_TARGET,
        title=f"Routing policy: {len(rules)} task categor{'y' if len(rules) == 1 else 'ies'} "
        "to cheaper models",
        payload={"document": document, "categories": [r["when"]["category"][0] for r in rules]},
        evidence={
            "window_days": round(inputs.traffic.observed_days, 1),
            "rules": [
                {
                    "category": c.category,
                    "model": c.best,
                    "current_model": c.current,
                    "quality": "verified" if c.verified else "unverified",
                    "monthly_saving_micros": c.draft.monthly_saving_micros,
                }
                for c in choices
                if c.draft is not None
            ],
        },
        monthly_saving_micros=saving,
        saving_percent=_percent(saving, current_cost),
        confidence=round(min(confidences), 2),
    )


def _rising_errors(inputs: Inputs) -> list[Draft]:
    settings = inputs.settings
    traffic = inputs.traffic
    days = day_buckets(start=traffic.window_start, end=traffic.window_end)
    recent_from = days[-RECENT_DAYS] if len(days) > RECENT_DAYS else days[0]
    drafts = []
    for model, series in sorted(inputs.daily_errors.items()):
        if not model:
            continue
        recent = [series.get(day, (0, 0)) for day in days if day >= recent_from]
        before = [series.get(day, (0, 0)) for day in days if day < recent_from]
        recent_n, recent_e = sum(n for n, _ in recent), sum(e for _, e in recent)
        before_n, before_e = sum(n for n, _ in before), sum(e for _, e in before)
        if recent_n < settings.min_requests or before_n < settings.min_requests:
            continue
        recent_rate, before_rate = recent_e / recent_n, before_e / before_n
        if recent_rate < settings.max_error_rate:
            continue
        if recent_rate < DEFAULT_ERROR_RISE_FACTOR * before_rate:
            continue
        drafts.append(
            Draft(
                kind=Kind.RISING_ERRORS,
                target=model,
                title=f"{model}: error rate rose to {recent_rate:.1%} (was {before_rate:.1%})",
                payload={"model": model},
                evidence={
                    "recent_days": RECENT_DAYS,
                    "recent_requests": recent_n,
                    "recent_errors": recent_e,
                    "recent_error_rate": round(recent_rate, 4),
                    "baseline_requests": before_n,
                    "baseline_errors": before_e,
                    "baseline_error_rate": round(before_rate, 4),
                    "daily": [
                        {
                            "day": day.date().isoformat(),
                            "requests": series.get(day, (0, 0))[0],
                            "errors": series.get(day, (0, 0))[1],
                        }
                        for day in days
                    ],
                },
                confidence=round(
                    CONFIDENCE_FLAG * _volume_factor(recent_n, settings.min_requests), 2
                ),
            )
        )
    return drafts


def _runaway_spend(inputs: Inputs) -> list[Draft]:
    settings = inputs.settings
    drafts = []
    days = day_buckets(
        start=inputs.traffic.window_end - timedelta(days=13), end=inputs.traffic.window_end
    )
    for spend in inputs.key_spend:
        this, previous = spend.this_week_micros, spend.previous_week_micros
        if this - previous < settings.runaway_spend_min_micros:
            continue
        if this < settings.runaway_spend_ratio * previous:
            continue
        name, prefix = inputs.key_labels.get(spend.api_key_id, (f"key #{spend.api_key_id}", ""))
        excess = this - previous
        ratio = round(this / previous, 2) if previous else None
        drafts.append(
            Draft(
                kind=Kind.RUNAWAY_SPEND,
                target=f"api_key:{spend.api_key_id}",
                title=f"Key {name!r} spent {ratio or 'far'}x last week's amount"
                if ratio
                else f"Key {name!r} started spending this week",
                payload={"api_key_id": spend.api_key_id, "api_key_prefix": prefix, "name": name},
                evidence={
                    "this_week_micros": this,
                    "previous_week_micros": previous,
                    "ratio": ratio,
                    "daily": [
                        {"day": day.date().isoformat(), "cost_micros": spend.daily.get(day, 0)}
                        for day in days
                    ],
                    "suggestion": "check the caller, or set a spend cap on the key",
                },
                # What a month at this week's pace costs beyond last week's.
                monthly_saving_micros=int(excess * DAYS_PER_MONTH / 7),
                saving_percent=_percent(excess, this),
                confidence=CONFIDENCE_FLAG if previous else CONFIDENCE_FLAG / 2,
            )
        )
    return drafts


def _cache_opportunities(inputs: Inputs) -> list[Draft]:
    settings = inputs.settings
    totals = inputs.traffic.model_totals()
    drafts = []
    for model, dupes in sorted(inputs.traffic.duplicates.items()):
        if dupes.duplicate_requests < settings.cache_min_duplicates:
            continue
        cell = totals.get(model, Cell())
        per_request = cell.cost_micros // cell.ok_requests if cell.ok_requests else 0
        wasted = dupes.duplicate_requests * per_request
        saving = int(wasted * inputs.month_factor)
        drafts.append(
            Draft(
                kind=Kind.CACHE_OPPORTUNITY,
                target=model,
                title=f"{dupes.duplicate_requests} repeated identical requests to {model}",
                payload={"model": model},
                evidence={
                    "window_days": round(inputs.traffic.observed_days, 1),
                    "hashed_requests": dupes.hashed_requests,
                    "repeated_prompts": dupes.repeated_prompts,
                    "duplicate_requests": dupes.duplicate_requests,
                    "duplicate_share": round(dupes.duplicate_requests / dupes.hashed_requests, 4)
                    if dupes.hashed_requests
                    else 0.0,
                    "top_repeats": dupes.top_repeats,
                    "cost_per_request_micros": per_request,
                    "not_hashed_rows": inputs.traffic.not_hashed,
                    "note": "rows without stored text (zero retention) are never hashed",
                },
                monthly_saving_micros=saving,
                saving_percent=_percent(saving, int(cell.cost_micros * inputs.month_factor)),
                confidence=CONFIDENCE_CACHE,
            )
        )
    return drafts


def recommendations_compute(inputs: Inputs) -> list[Draft]:
    """Every recommendation the inputs support (see the module docstring)."""
    drafts: list[Draft] = []
    choices = []
    # Only the classifier's categories: a rule for any other could never match (and policy
    # validation refuses it); such rows still count for the flags below.
    for category in inputs.traffic.categories():
        if category not in CATEGORIES:
            continue
        choice = _primary(inputs, category)
        if choice is None:
            continue
        choices.append(choice)
        if choice.draft is not None:
            drafts.append(choice.draft)
        fallback = _fallback_draft(inputs, choice)
        if fallback is not None:
            drafts.append(fallback)
    policy = _policy_draft(inputs, choices)
    if policy is not None:
        drafts.append(policy)
    drafts += _rising_errors(inputs)
    drafts += _runaway_spend(inputs)
    drafts += _cache_opportunities(inputs)
    return drafts
