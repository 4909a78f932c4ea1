"""Every write of optimizer data: the job, settings, dismiss / apply / revert, the digest.

Keyword-only and transactional. ``actor`` is the dashboard user; ``None`` is the operator or the
system (the periodic job, the management command), which skips role checks. Applying a
recommendation goes through the gateway's routing-policy services, so it is validated, audited
and versioned exactly like an edit made by hand — and undone by their rollback.
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiKey, Membership, Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from apps.gateway import policy_services
from apps.gateway.models import CatalogModel, RoutingPolicy, RoutingPolicyVersion
from apps.gateway.policy_selectors import policy_catalog
from apps.gateway.rollups import rollups_update
from apps.gateway.routing.policies import PolicyInvalid, policy_document_validate
from llmwise.errors import ApplicationError, Conflict

from . import aggregation, selectors
from .models import OptimizerRun, OptimizerSettings, Recommendation
from .recommend import RULE_PREFIX, Draft, Inputs, policy_rule, recommendations_compute

logger = logging.getLogger(__name__)

NEW = Recommendation.Status.NEW
APPLIED_POLICY_NAME = "optimizer"
RUN_HISTORY_DAYS = 90
DIGEST_MIN_INTERVAL = timedelta(days=6)  # a retried weekly task never mails twice
DIGEST_MAX_ITEMS = 10


# --- the job ------------------------------------------------------------------------------------
def _lock_settings(org: Organization) -> OptimizerSettings:
    """The org's settings row, locked: one job (or apply) at a time writes its recommendations."""
    selectors.optimizer_settings_of(org=org)
    return OptimizerSettings.objects.select_for_update().get(organization=org)


def _policy_valid(document: dict[str, Any]) -> bool:
    try:
        policy_document_validate(document=document, catalog=policy_catalog())
    except PolicyInvalid:
        return False
    return True


def _inputs(*, org: Organization, thresholds: OptimizerSettings, run: OptimizerRun) -> Inputs:
    traffic = aggregation.traffic_scan(
        org=org,
        start=run.window_start,
        end=run.window_end,
        batch_size=django_settings.OPTIMIZER_BATCH_SIZE,
    )
    keys = aggregation.key_spend(org=org, now=run.window_end)
    labels = {
        pk: (name, prefix)
        for pk, name, prefix in ApiKey.objects.filter(
            organization=org, id__in=[k.api_key_id for k in keys]
        ).values_list("id", "name", "prefix")
    }
    return Inputs(
        traffic=traffic,
        settings=thresholds,
        catalog={m.id: m for m in CatalogModel.objects.filter(enabled=True)},
        quality=selectors.replay_quality(org=org, now=run.window_end),
        daily_errors=aggregation.daily_model_errors(
            org=org, start=run.window_start, end=run.window_end
        ),
        key_spend=keys,
        key_labels=labels,
        max_chain=django_settings.GATEWAY_MESH_MAX_CHAIN,
        validate_policy=_policy_valid,
    )


def _store(*, org: Organization, run: OptimizerRun, drafts: list[Draft]) -> tuple[int, int, int]:
    """Write the drafts: one *new* recommendation per kind and target, updated in place when
    its change is the same, superseded when it changed or no longer holds. A change that was
    dismissed or applied is not proposed again. Returns (created, updated, superseded)."""
    now = timezone.now()
    existing = {
        (rec.kind, rec.target): rec
        for rec in Recommendation.objects.filter(organization=org, status=NEW)
    }
    closed = set(
        Recommendation.objects.filter(
            organization=org,
            status__in=(Recommendation.Status.DISMISSED, Recommendation.Status.APPLIED),
        ).values_list("fingerprint", flat=True)
    )
    created = updated = superseded = 0
    produced: set[tuple[str, str]] = set()
    for draft in drafts:
        key = (draft.kind, draft.target)
        produced.add(key)
        fingerprint = draft.fingerprint
        old = existing.get(key)
        numbers = {
            "title": draft.title,
            "evidence": draft.evidence,
            "monthly_saving_micros": draft.monthly_saving_micros,
            "saving_percent": draft.saving_percent,
            "confidence": draft.confidence,
            "run": run,
        }
        if old is not None and old.fingerprint == fingerprint:
            for name, value in numbers.items():
                setattr(old, name, value)
            old.save(update_fields=[*numbers, "updated_at"])
            updated += 1
            continue
        if old is not None:
            # Before the insert: the partial unique constraint allows one new row per target.
            old.status = Recommendation.Status.SUPERSEDED
            old.status_changed_at = now
            old.save(update_fields=["status", "status_changed_at", "updated_at"])
            superseded += 1
        if fingerprint in closed:
            continue
        Recommendation.objects.create(
            organization=org,
            kind=draft.kind,
            target=draft.target,
            payload=draft.payload,
            fingerprint=fingerprint,
            **numbers,
        )
        created += 1
    for key, old in existing.items():
        if key not in produced:
            old.status = Recommendation.Status.SUPERSEDED
            old.status_changed_at = now
            old.save(update_fields=["status", "status_changed_at", "updated_at"])
            superseded += 1
    return created, updated, superseded


def optimizer_run(*, org: Organization, trigger: str = "schedule") -> OptimizerRun:
    """Aggregate ``org``'s traffic over its window and refresh its recommendations.

    The reads happen outside any transaction (bounded batches, see :mod:`.aggregation`); only
    the final write of the recommendations is one short transaction, under the org's optimizer
    lock, so two runs at once never duplicate anything. Safe to retry.
    """
    started = time.perf_counter()
    # Fold the newest log rows into the rollups first (a no-op when the minutely job is current).
    rollups_update()
    thresholds = selectors.optimizer_settings_of(org=org)
    end = timezone.now()
    run = OptimizerRun.objects.create(
        organization=org,
        trigger=trigger,
        window_start=end - timedelta(days=thresholds.window_days),
        window_end=end,
        started_at=end,
    )
    try:
        inputs = _inputs(org=org, thresholds=thresholds, run=run)
        drafts = recommendations_compute(inputs)
        with transaction.atomic():
            _lock_settings(org)
            created, updated, superseded = _store(org=org, run=run, drafts=drafts)
            run.status = OptimizerRun.Status.DONE
            run.rows_scanned = inputs.traffic.rows_scanned
            run.stats = {
                "cells": inputs.traffic.stats_table(),
                "observed_days": round(inputs.traffic.observed_days, 2),
                "not_hashed": inputs.traffic.not_hashed,
            }
            run.created, run.updated, run.superseded = created, updated, superseded
            run.finished_at = timezone.now()
            run.duration_ms = int((time.perf_counter() - started) * 1000)
            run.save()
            OptimizerRun.objects.filter(
                organization=org, started_at__lt=end - timedelta(days=RUN_HISTORY_DAYS)
            ).delete()
    except Exception as exc:
        logger.exception("optimizer run %s for org %s failed", run.pk, org.pk)
        OptimizerRun.objects.filter(pk=run.pk).update(
            status=OptimizerRun.Status.FAILED,
            error=str(exc)[:300],
            finished_at=timezone.now(),
            duration_ms=int((time.perf_counter() - started) * 1000),
        )
        raise
    return run


def optimizer_run_request(*, org: Organization, actor: User | None) -> None:
    """ "Run now" from the dashboard: queue the job for ``org`` (admins and owners)."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    from .tasks import optimizer_run_org_task  # tasks import services: import here, not at top

    org_id = org.pk
    transaction.on_commit(lambda: optimizer_run_org_task.delay(org_id, "dashboard"))


# --- settings -----------------------------------------------------------------------------------
SETTINGS_FIELDS = (
    "window_days",
    "min_requests",
    "max_error_rate",
    "max_p95_latency_ms",
    "min_quality",
    "min_judged",
    "runaway_spend_ratio",
    "runaway_spend_min_micros",
    "cache_min_duplicates",
    "digest_enabled",
)


@transaction.atomic
def optimizer_settings_update(
    *, org: Organization, actor: User | None, values: dict[str, Any]
) -> OptimizerSettings:
    """Change ``org``'s thresholds or digest opt-in (validated by the model's validators)."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    current = _lock_settings(org)
    changes = {}
    for name, value in values.items():
        if name not in SETTINGS_FIELDS:
            raise ApplicationError(f"Unknown setting {name!r}.", param=name)
        if getattr(current, name) != value:
            changes[name] = {"from": getattr(current, name), "to": value}
            setattr(current, name, value)
    if not changes:
        return current
    try:
        current.full_clean(exclude=["organization"])
    except ValidationError as exc:
        field, errors = next(iter(exc.message_dict.items()))
        raise ApplicationError(f"{field}: {errors[0]}", param=field) from exc
    current.save()
    audit_record(
        org=org, actor=actor, action="optimizer.settings", target="optimizer", data=changes
    )
    return current


# --- dismiss / apply / revert -------------------------------------------------------------------
def _locked_recommendation(*, org: Organization, recommendation_id: int) -> Recommendation:
    selectors.recommendation_of(org=org, recommendation_id=recommendation_id)  # 404 first
    return Recommendation.objects.select_for_update().get(organization=org, pk=recommendation_id)


def _set_status(rec: Recommendation, status: str, actor: User | None) -> None:
    rec.status = status
    rec.status_changed_by = actor
    rec.status_changed_at = timezone.now()


def _target_label(rec: Recommendation) -> str:
    return f"recommendation:{rec.pk}"


@transaction.atomic
def recommendation_dismiss(
    *, org: Organization, actor: User | None, recommendation_id: int
) -> Recommendation:
    """Set a new recommendation aside; the same change is not proposed again."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    rec = _locked_recommendation(org=org, recommendation_id=recommendation_id)
    if rec.status not in (NEW, Recommendation.Status.REVERTED):
        raise Conflict(f"This recommendation is {rec.get_status_display().lower()}.")
    _set_status(rec, Recommendation.Status.DISMISSED, actor)
    rec.save(update_fields=["status", "status_changed_by", "status_changed_at", "updated_at"])
    audit_record(
        org=org,
        actor=actor,
        action="optimizer.recommendation.dismiss",
        target=_target_label(rec),
        data={"kind": rec.kind, "target": rec.target},
    )
    return rec


def recommendation_rules(rec: Recommendation) -> list[dict[str, Any]]:
    """The policy rules applying ``rec`` adds (first-match: they go before the others)."""
    payload = rec.payload
    if rec.kind == Recommendation.Kind.ROUTING_POLICY:
        return [dict(rule) for rule in payload.get("document", {}).get("rules", [])]
    if rec.kind in (Recommendation.Kind.PRIMARY_MODEL, Recommendation.Kind.FALLBACK_CHAIN):
        return [
            policy_rule(
                category=payload["category"],
                model=payload["model"],
                fallbacks=list(payload.get("fallbacks", [])),
            )
        ]
    raise ApplicationError(
        "This recommendation is a flag to act on; there is nothing to apply.",
        code="not_applicable",
    )


def _rule_categories(rule: dict[str, Any]) -> set[str]:
    when = rule.get("when") if isinstance(rule, dict) else None
    categories = when.get("category") if isinstance(when, dict) else None
    return set(categories) if isinstance(categories, list) else set()


def proposed_document(
    *, base: dict[str, Any] | None, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    """``base`` with ``rules`` put first, replacing the optimizer's own earlier rules for the
    same categories. Without a base policy: a new one routing every request (``applies_to:
    all``), so the rules also reach requests that name a model."""
    if base is None:
        return {"applies_to": "all", "rules": rules}
    document = copy.deepcopy(base)
    categories = set().union(*(_rule_categories(rule) for rule in rules))
    kept = [
        rule
        for rule in document.get("rules", [])
        if not (
            isinstance(rule, dict)
            and str(rule.get("name", "")).startswith(RULE_PREFIX)
            and _rule_categories(rule) <= categories
        )
    ]
    document["rules"] = [*rules, *kept]
    return document


def recommendation_preview(
    *, org: Organization, rec: Recommendation
) -> tuple[RoutingPolicy | None, dict[str, Any] | None, dict[str, Any]]:
    """(the policy applying would change, its document now, its document after)."""
    policy = selectors.default_policy_of(org=org)
    before = policy.current_version.document if policy and policy.current_version else None
    return policy, before, proposed_document(base=before, rules=recommendation_rules(rec))


def _free_policy_name(org: Organization) -> str:
    taken = set(RoutingPolicy.objects.filter(organization=org).values_list("name", flat=True))
    name, n = APPLIED_POLICY_NAME, 1
    while name in taken:
        n += 1
        name = f"{APPLIED_POLICY_NAME}-{n}"
    return name


@transaction.atomic
def recommendation_apply(
    *, org: Organization, actor: User | None, recommendation_id: int
) -> Recommendation:
    """Apply a routing recommendation: a new version of the org's default policy with its rules
    first, or a new default policy when there is none. Both audit-logged by the policy services;
    :func:`recommendation_revert` undoes it."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_settings(org)
    rec = _locked_recommendation(org=org, recommendation_id=recommendation_id)
    if rec.status not in (NEW, Recommendation.Status.REVERTED):
        raise Conflict(f"This recommendation is {rec.get_status_display().lower()}.")
    policy, _before, after = recommendation_preview(org=org, rec=rec)
    note = f"optimizer recommendation {rec.pk}"
    if policy is None:
        policy = policy_services.routing_policy_create(
            org=org,
            actor=actor,
            name=_free_policy_name(org),
            description="Created by applying an optimizer recommendation.",
            document=after,
            is_default=True,
            note=note,
        )
        info = {"policy_id": policy.pk, "policy_name": policy.name, "created_policy": True}
        previous_number = None
    else:
        previous = policy.current_version
        previous_number = previous.number if previous is not None else None
        policy = policy_services.routing_policy_update(
            org=org, actor=actor, policy_id=policy.pk, document=after, note=note
        )
        policy.refresh_from_db()
        if policy.current_version is None or policy.current_version.number == previous_number:
            raise Conflict("The default policy already routes this way.", code="already_applied")
        info = {"policy_id": policy.pk, "policy_name": policy.name, "created_policy": False}
    info["previous_version"] = previous_number
    _set_status(rec, Recommendation.Status.APPLIED, actor)
    rec.applied_policy_version = policy.current_version
    rec.apply_info = info
    rec.save()
    audit_record(
        org=org,
        actor=actor,
        action="optimizer.recommendation.apply",
        target=_target_label(rec),
        data={
            "kind": rec.kind,
            "target": rec.target,
            "policy": policy.name,
            "version": policy.current_version.number if policy.current_version else None,
            "previous_version": previous_number,
        },
    )
    return rec


@transaction.atomic
def recommendation_revert(
    *, org: Organization, actor: User | None, recommendation_id: int
) -> Recommendation:
    """Undo an apply: roll the policy back to the version before it (a new version, through the
    policy services), or delete the policy the apply created. Refused when the policy changed
    since, so nobody's later edit is silently thrown away."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_settings(org)
    rec = _locked_recommendation(org=org, recommendation_id=recommendation_id)
    if rec.status != Recommendation.Status.APPLIED:
        raise Conflict("Only an applied recommendation can be reverted.")
    info = rec.apply_info
    policy = RoutingPolicy.objects.filter(organization=org, pk=info.get("policy_id")).first()
    applied: RoutingPolicyVersion | None = rec.applied_policy_version
    if policy is None or applied is None:
        raise Conflict(
            "The policy this recommendation changed no longer exists.", code="policy_gone"
        )
    if policy.current_version_id != applied.pk:
        raise Conflict(
            f"Policy {policy.name!r} changed after this was applied; roll it back from its "
            "history instead.",
            code="policy_changed",
        )
    if info.get("created_policy"):
        policy_services.routing_policy_delete(org=org, actor=actor, policy_id=policy.pk)
    else:
        policy_services.routing_policy_rollback(
            org=org,
            actor=actor,
            policy_id=policy.pk,
            version_number=int(info["previous_version"]),
        )
    _set_status(rec, Recommendation.Status.REVERTED, actor)
    rec.save(update_fields=["status", "status_changed_by", "status_changed_at", "updated_at"])
    audit_record(
        org=org,
        actor=actor,
        action="optimizer.recommendation.revert",
        target=_target_label(rec),
        data={"kind": rec.kind, "policy": policy.name, "deleted": bool(info.get("created_policy"))},
    )
    return rec


# --- the weekly digest --------------------------------------------------------------------------
def _recipients(org: Organization) -> list[str]:
    return sorted(
        Membership.objects.filter(
            organization=org, role__in=(Role.OWNER, Role.ADMIN), user__is_active=True
        ).values_list("user__email", flat=True)
    )


def digest_send(*, org: Organization, now: Any = None) -> bool:
    """Email ``org``'s owners and admins its new recommendations, if it opted in and was not
    mailed in the last six days. The mail leaves on commit. Returns whether one was queued."""
    now = now or timezone.now()
    with transaction.atomic():
        thresholds = _lock_settings(org)
        if not thresholds.digest_enabled:
            return False
        if thresholds.last_digest_at and now - thresholds.last_digest_at < DIGEST_MIN_INTERVAL:
            return False
        recs = list(selectors.recommendations_of(org=org)[:DIGEST_MAX_ITEMS])
        recipients = _recipients(org)
        if not recs or not recipients:
            return False
        thresholds.last_digest_at = now
        thresholds.save(update_fields=["last_digest_at", "updated_at"])
        body = render_to_string(
            "optimizer/emails/digest.txt",
            {
                "org": org,
                "recommendations": recs,
                "total_micros": sum(r.monthly_saving_micros for r in recs),
                "url": django_settings.SITE_URL.rstrip("/") + reverse("dashboard:recommendations"),
            },
        )
        subject = (
            f"[LLMWise] {len(recs)} recommendation{'s' if len(recs) != 1 else ''} for {org.name}"
        )
        transaction.on_commit(
            lambda: send_mail(
                subject, body, django_settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False
            )
        )
    return True


def digest_org_ids() -> list[int]:
    """Organizations that opted in to the digest."""
    return list(
        OptimizerSettings.objects.filter(digest_enabled=True).values_list(
            "organization_id", flat=True
        )
    )
