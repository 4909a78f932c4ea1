"""The replay lab: past requests re-run against candidate models and judged against the originals.

1. :func:`replay_create` picks a sample of the org's past requests — only rows that kept their
   text (never zero-retention ones, never a zero-retention key's or org's), never another org's,
   never the optimizer's own calls — and estimates what replaying and judging them costs. Nothing
   is called: the run waits in *draft* for confirmation.
2. :func:`replay_confirm` checks the wallet can cover the estimate (402 otherwise) and queues
   the Celery job.
3. :func:`replay_execute` (the job) re-runs each request through the gateway's call service,
   billed like any call to the org's internal dashboard key, then asks the judge model to compare
   the original and the candidate answers blind (A/B in random order). Progress is written after
   each request; a cancel is honoured between requests. Only metadata is stored on the run —
   the texts of the calls it makes live in the request log, under its retention rules.
"""

from __future__ import annotations

import logging
import random
import statistics
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from apps.gateway import calls
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.policy_selectors import policy_catalog, routing_policy_lookup
from apps.gateway.pricing import cost_micros
from apps.gateway.principals import dashboard_api_key
from apps.gateway.providers.base import ChatMessage, Usage
from apps.gateway.providers.transport import http_clients_aclose
from apps.gateway.routing.classifier import classify
from apps.gateway.routing.policies import (
    EffectivePolicy,
    PolicyCatalog,
    policy_compile,
    policy_document_validate,
    policy_route,
)
from apps.wallet.selectors import wallet_summary
from apps.wallet.services import InsufficientCredit
from llmwise.errors import ApplicationError, Conflict, new_request_id

from . import aggregation, selectors
from .judge import conversation_text, judge_messages, outcome_for_candidate, verdict_read
from .models import Recommendation, ReplayRun

logger = logging.getLogger(__name__)

REPLAY_ENDPOINT = "optimizer.replay"
JUDGE_ENDPOINT = "optimizer.judge"
SAMPLE_POOL_FACTOR = 5  # sample from the newest N x size eligible rows: bounded, recent
MIN_REPLAY_MAX_TOKENS = 64
JUDGE_PROMPT_OVERHEAD_TOKENS = 200  # the judge's instructions and tags
DRAFT_POLICY_NAME = "replay-draft"
Status = ReplayRun.Status


@dataclass(frozen=True)
class _Target:
    model: str
    fallbacks: tuple[str, ...] = ()


# --- choosing what to replay --------------------------------------------------------------------
def _messages(prompt: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(prompt, list):
        return ()
    out = []
    for message in prompt:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            out.append(ChatMessage(str(message.get("role", "user")), message["content"]))
    return tuple(out)


def replayable_rows(*, org: Organization, category: str = "", exclude_model: str = "") -> Any:
    """``org``'s successful past requests that kept their text, in its optimizer window."""
    if org.zero_retention:
        raise ApplicationError(
            "This organization keeps no prompt text (zero retention): there is nothing to replay.",
            code="nothing_to_replay",
        )
    thresholds = selectors.optimizer_settings_of(org=org)
    end = timezone.now()
    rows = (
        aggregation.window_rows(
            org=org, start=end - timedelta(days=thresholds.window_days), end=end
        )
        .filter(status=RequestLog.Status.OK, prompt__isnull=False)
        .exclude(completion="")
    )
    blocked = aggregation.zero_retention_key_ids(org=org)
    if blocked:
        rows = rows.exclude(api_key_id__in=blocked)
    if category:
        rows = rows.filter(Q(category=category) | Q(category="", route__category=category))
    if exclude_model:
        rows = rows.exclude(model=exclude_model)
    return rows


def _draft_policy(*, org: Organization, document: Any, catalog: PolicyCatalog) -> EffectivePolicy:
    valid = policy_document_validate(document=document, catalog=catalog)
    return policy_compile(
        name=DRAFT_POLICY_NAME, document=valid, lookup=routing_policy_lookup(org=org)
    )


def _target_for(
    *, log: RequestLog, run: ReplayRun, policy: EffectivePolicy | None, catalog: PolicyCatalog
) -> _Target | None:
    """Which model(s) replay ``log``: the run's candidate, or what the draft policy picks."""
    if policy is None:
        return _Target(run.candidate_model)
    messages = _messages(log.prompt)
    decision = policy_route(
        policy=policy,
        classification=classify(messages),
        requested_model=log.requested_model,
        catalog=catalog,
        prompt_tokens=log.prompt_tokens,
    )
    if decision.model is None:
        return None
    return _Target(decision.model, tuple(decision.fallbacks))


def _estimate(
    *, logs: list[RequestLog], targets: list[_Target | None], models: dict[str, CatalogModel]
) -> int:
    """Expected cost: each request at its candidate's prices with the original's token counts,
    plus a judge call reading the conversation and both answers. An estimate, not a hold: every
    call is billed at its real usage."""
    judge = models.get(settings.OPTIMIZER_JUDGE_MODEL)
    total = 0
    for log, target in zip(logs, targets, strict=True):
        if target is None:
            continue
        model = models.get(target.model)
        if model is None:  # "auto": price it at the original model, the best guess we have
            model = models.get(log.model)
        if model is not None:
            total += cost_micros(
                model=model, usage=Usage(log.prompt_tokens, max(log.completion_tokens, 1))
            )
        if judge is not None:
            total += cost_micros(
                model=judge,
                usage=Usage(
                    log.prompt_tokens + 2 * log.completion_tokens + JUDGE_PROMPT_OVERHEAD_TOKENS,
                    settings.OPTIMIZER_JUDGE_MAX_TOKENS // 4,
                ),
            )
    return total


@transaction.atomic
def replay_create(
    *,
    org: Organization,
    actor: User | None,
    sample_size: int,
    recommendation_id: int | None = None,
    policy_document: Any = None,
) -> ReplayRun:
    """A draft replay run of a recommendation (primary model or routing policy) or a draft policy
    document: the sample is picked and the cost estimated; nothing runs until confirmed."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    if not 1 <= sample_size <= settings.OPTIMIZER_REPLAY_MAX_SAMPLE:
        raise ApplicationError(
            f"The sample size is 1 to {settings.OPTIMIZER_REPLAY_MAX_SAMPLE} requests.",
            param="sample_size",
        )
    if (recommendation_id is None) == (policy_document is None):
        raise ApplicationError("Replay a recommendation or a draft policy document.")
    recommendation = None
    category = candidate = ""
    catalog = policy_catalog()
    if recommendation_id is not None:
        recommendation = selectors.recommendation_of(org=org, recommendation_id=recommendation_id)
        if recommendation.kind == Recommendation.Kind.PRIMARY_MODEL:
            category = recommendation.payload["category"]
            candidate = recommendation.payload["model"]
        elif recommendation.kind == Recommendation.Kind.ROUTING_POLICY:
            policy_document = recommendation.payload["document"]
        else:
            raise ApplicationError(
                "Only model and routing-policy recommendations can be replayed.",
                code="not_replayable",
            )
    policy = None
    if policy_document is not None:
        policy = _draft_policy(org=org, document=policy_document, catalog=catalog)
    pool = list(
        replayable_rows(org=org, category=category, exclude_model=candidate)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)[: sample_size * SAMPLE_POOL_FACTOR]
    )
    if not pool:
        raise ApplicationError(
            "No past request of this kind kept its text in the window: nothing to replay.",
            code="nothing_to_replay",
        )
    sample = sorted(random.SystemRandom().sample(pool, min(sample_size, len(pool))))
    run = ReplayRun(
        organization=org,
        recommendation=recommendation,
        policy_document=policy_document,
        category=category,
        candidate_model=candidate,
        request_id=f"replay_{new_request_id().removeprefix('req_')}",
        sample_size=sample_size,
        sample=sample,
        total=len(sample),
        created_by=actor,
    )
    logs = list(RequestLog.objects.filter(organization=org, pk__in=sample).order_by("id"))
    targets = [_target_for(log=log, run=run, policy=policy, catalog=catalog) for log in logs]
    run.estimate_micros = _estimate(logs=logs, targets=targets, models=dict(catalog.models))
    run.save()
    return run


@transaction.atomic
def replay_confirm(*, org: Organization, actor: User | None, run_id: int) -> ReplayRun:
    """Start a draft run once the wallet can cover its estimate (else 402, nothing runs)."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    selectors.replay_run_of(org=org, run_id=run_id)
    run = ReplayRun.objects.select_for_update().get(organization=org, pk=run_id)
    if run.status != Status.DRAFT:
        raise Conflict(f"This replay is already {run.get_status_display().lower()}.")
    available = wallet_summary(org=org).available_micros
    if available < run.estimate_micros:
        raise InsufficientCredit(
            f"This replay is estimated at ${run.estimate_micros / 1_000_000:.4f}; the wallet has "
            f"${available / 1_000_000:.4f} available. Add credit or replay fewer requests."
        )
    run.status = Status.QUEUED
    run.confirmed_at = timezone.now()
    run.save(update_fields=["status", "confirmed_at"])
    audit_record(
        org=org,
        actor=actor,
        action="optimizer.replay.start",
        target=f"replay:{run.pk}",
        data={"requests": run.total, "estimate_micros": run.estimate_micros},
    )
    from .tasks import replay_run_task  # tasks import this module

    run_pk = run.pk
    transaction.on_commit(lambda: replay_run_task.delay(run_pk))
    return run


@transaction.atomic
def replay_cancel(*, org: Organization, actor: User | None, run_id: int) -> ReplayRun:
    """Stop a run: a draft never starts; a running job stops before its next request."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    selectors.replay_run_of(org=org, run_id=run_id)
    run = ReplayRun.objects.select_for_update().get(organization=org, pk=run_id)
    if run.status not in (Status.DRAFT, Status.QUEUED, Status.RUNNING):
        raise Conflict(f"This replay is already {run.get_status_display().lower()}.")
    run.status = Status.CANCELLED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at"])
    return run


# --- the job ------------------------------------------------------------------------------------
def _summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    done = [item for item in items if not item.get("error")]
    counts = dict.fromkeys(("win", "tie", "loss", "unjudged"), 0)
    for item in done:
        counts[item["verdict"]] += 1
    original = sum(item["original_cost_micros"] for item in done)
    candidate = sum(item["candidate_cost_micros"] for item in done)
    judged = counts["win"] + counts["tie"] + counts["loss"]

    def median(key: str) -> int | None:
        values = [item[key] for item in done if item.get(key) is not None]
        return round(statistics.median(values)) if values else None

    return {
        **counts,
        "judged": judged,
        "not_worse_rate": round((counts["win"] + counts["tie"]) / judged, 3) if judged else None,
        "failed": len(items) - len(done),
        "original_cost_micros": original,
        "candidate_cost_micros": candidate,
        "cost_delta_micros": candidate - original,
        "cost_delta_percent": round(100 * (candidate - original) / original, 1)
        if original
        else None,
        "judge_cost_micros": sum(item.get("judge_cost_micros", 0) for item in items),
        "original_latency_p50_ms": median("original_latency_ms"),
        "candidate_latency_p50_ms": median("candidate_latency_ms"),
    }


def _save_progress(run: ReplayRun, items: list[dict[str, Any]], cost: int) -> str:
    """Write progress; returns the run's status as stored (a cancel may have landed)."""
    failed = sum(1 for item in items if item.get("error"))
    ReplayRun.objects.filter(pk=run.pk).update(
        completed=len(items) - failed,
        failed=failed,
        actual_cost_micros=cost,
        results={"items": items, "summary": _summary(items)},
    )
    return str(ReplayRun.objects.filter(pk=run.pk).values_list("status", flat=True).first())


def _finish(run: ReplayRun, status: str, error: str = "") -> None:
    # Never overwrite a cancel that landed while the last request was running.
    ReplayRun.objects.filter(pk=run.pk).exclude(status=Status.CANCELLED).update(
        status=status, error=error[:300], finished_at=timezone.now()
    )


async def _replay_one(
    *,
    run: ReplayRun,
    log: RequestLog,
    target: _Target,
    api_key: Any,
    rng: random.Random,
    catalog: PolicyCatalog,
) -> dict[str, Any]:
    messages = _messages(log.prompt)
    item: dict[str, Any] = {
        "log_id": log.pk,
        "original_request_id": log.request_id,
        "category": log.category or (log.route or {}).get("category", ""),
        "original_model": log.model,
        "candidate_model": target.model,
        "original_cost_micros": log.cost_micros,
        "original_latency_ms": log.latency_ms,
        "candidate_cost_micros": 0,
        "judge_cost_micros": 0,
        "verdict": "unjudged",
    }
    # Room for an answer like the original's, within what every member of the chain can give.
    max_tokens = max(2 * log.completion_tokens, MIN_REPLAY_MAX_TOKENS)
    for model_id in (target.model, *target.fallbacks):
        member = catalog.resolve(model_id)
        if member is not None:
            max_tokens = min(max_tokens, member.max_output_tokens)
    outcome = await calls.chat_call(
        api_key=api_key,
        chat=calls.ChatInput(
            model=target.model,
            messages=messages,
            max_tokens=max_tokens,
            fallbacks=target.fallbacks,
        ),
        request_id=new_request_id(),
        endpoint=REPLAY_ENDPOINT,
        parent_request_id=run.request_id,
    )
    item.update(
        candidate_model=outcome.model.id,
        candidate_request_id=outcome.request_id,
        candidate_cost_micros=outcome.cost_micros,
        candidate_latency_ms=outcome.latency_ms,
    )
    # Blind: the candidate is A or B at random, so position bias cannot favour either side.
    candidate_label = rng.choice("AB")
    original_text, candidate_text = log.completion, outcome.result.text
    answer_a, answer_b = (
        (candidate_text, original_text)
        if candidate_label == "A"
        else (original_text, candidate_text)
    )
    max_chars = settings.OPTIMIZER_JUDGE_ANSWER_MAX_CHARS
    try:
        verdict = await calls.chat_call(
            api_key=api_key,
            chat=calls.ChatInput(
                model=settings.OPTIMIZER_JUDGE_MODEL,
                messages=judge_messages(
                    conversation=conversation_text(log.prompt or [], max_chars=max_chars),
                    answer_a=answer_a,
                    answer_b=answer_b,
                    max_chars=max_chars,
                ),
                max_tokens=settings.OPTIMIZER_JUDGE_MAX_TOKENS,
                temperature=0.0,
            ),
            request_id=new_request_id(),
            endpoint=JUDGE_ENDPOINT,
            parent_request_id=run.request_id,
        )
    except InsufficientCredit:
        raise
    except ApplicationError as exc:
        item["judge_error"] = exc.code  # the replay happened and was billed; only unjudged
        return item
    item.update(
        judge_request_id=verdict.request_id,
        judge_cost_micros=verdict.cost_micros,
        verdict=outcome_for_candidate(
            verdict_read(verdict.result.text), candidate_label=candidate_label
        ),
    )
    return item


async def _replay_all(run: ReplayRun) -> None:
    org = run.organization
    api_key = await sync_to_async(dashboard_api_key)(org=org)
    catalog = await sync_to_async(policy_catalog)()
    policy = None
    if run.policy_document is not None:
        policy = await sync_to_async(_draft_policy)(
            org=org, document=run.policy_document, catalog=catalog
        )
    items: list[dict[str, Any]] = list((run.results or {}).get("items", []))
    done = {item["log_id"] for item in items}  # a retried job resumes after what it did
    cost = sum(item["candidate_cost_micros"] + item["judge_cost_micros"] for item in items)
    rng = random.Random(run.pk)  # noqa: S311 - A/B placement, not security
    try:
        for log_id in run.sample:
            if log_id in done:
                continue
            log = await RequestLog.objects.filter(
                organization=org, pk=log_id, prompt__isnull=False
            ).afirst()
            target = None
            if log is not None:
                target = await sync_to_async(_target_for)(
                    log=log, run=run, policy=policy, catalog=catalog
                )
            if log is None or target is None:
                items.append({"log_id": log_id, "error": "not_replayable", "verdict": "unjudged"})
            else:
                try:
                    item = await _replay_one(
                        run=run,
                        log=log,
                        target=target,
                        api_key=api_key,
                        rng=rng,
                        catalog=catalog,
                    )
                except InsufficientCredit:
                    await sync_to_async(_save_progress)(run, items, cost)
                    raise
                except ApplicationError as exc:
                    item = {
                        "log_id": log_id,
                        "original_request_id": log.request_id,
                        "candidate_model": target.model,
                        "error": exc.code,
                        "verdict": "unjudged",
                        "judge_cost_micros": 0,
                        "candidate_cost_micros": 0,
                    }
                items.append(item)
                cost += item.get("candidate_cost_micros", 0) + item.get("judge_cost_micros", 0)
            status = await sync_to_async(_save_progress)(run, items, cost)
            if status == Status.CANCELLED:
                return
    finally:
        await http_clients_aclose()


def replay_execute(*, run_id: int) -> ReplayRun | None:
    """Run a confirmed replay (the Celery job). Idempotent: a run that is not queued (or
    running, for a retry after a crash) is left alone; finished requests are not replayed."""
    with transaction.atomic():
        run = (
            ReplayRun.objects.select_for_update()
            .select_related("organization")
            .filter(pk=run_id, status__in=(Status.QUEUED, Status.RUNNING))
            .first()
        )
        if run is None:
            return None
        run.status = Status.RUNNING
        run.started_at = run.started_at or timezone.now()
        run.save(update_fields=["status", "started_at"])
    try:
        async_to_sync(_replay_all)(run)
    except InsufficientCredit:
        _finish(run, Status.FAILED, "The wallet ran out of credit; the rest was not replayed.")
    except Exception as exc:
        logger.exception("replay run %s failed", run.pk)
        _finish(run, Status.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    else:
        _finish(run, Status.DONE)
    run.refresh_from_db()
    return run
