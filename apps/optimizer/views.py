"""Dashboard pages of the optimizer: recommendations, before/after, the replay lab.

Thin: parse, call a service or selector, render. Every member reads; admins and owners act
(the services check it too). Charts read their data from ``json_script`` blocks
(static/js/recommendations.js): no data is interpolated into JavaScript.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Role
from apps.gateway.routing.policies import policy_document_dump, policy_text_parse
from apps.wallet.selectors import wallet_summary
from apps.wallet.services import InsufficientCredit

from . import replay, selectors, services
from .models import OptimizerSettings, Recommendation, ReplayRun

HISTORY_ROWS = 20
REPLAY_ROWS = 10
PROGRESS_REFRESH_SECONDS = 2
PAYMENT_REQUIRED = 402


class OptimizerSettingsForm(forms.ModelForm):
    class Meta:
        model = OptimizerSettings
        fields = services.SETTINGS_FIELDS


class ReplayForm(forms.Form):
    sample_size = forms.IntegerField(min_value=1, initial=10)


class DraftPolicyReplayForm(ReplayForm):
    policy = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text="A routing policy document (JSON or YAML), as on the policy editor.",
    )


def _can_act(request: OrgRequest) -> bool:
    return bool(request.membership.has_role(Role.ADMIN))


def _chart(rec: Recommendation) -> dict[str, Any] | None:
    """What the evidence chart of ``rec`` draws (money stays in micro-USD here)."""
    evidence = rec.evidence
    kind = rec.kind
    if kind == Recommendation.Kind.PRIMARY_MODEL:
        models = [m for m in evidence.get("models", []) if m.get("priced_cost_per_request_micros")]
        return {
            "type": "models",
            "labels": [m["model"] for m in models],
            "cost_micros": [m["priced_cost_per_request_micros"] for m in models],
            "error_percent": [round(100 * m["error_rate"], 2) for m in models],
        }
    if kind == Recommendation.Kind.FALLBACK_CHAIN:
        models = evidence.get("models", [])
        return {
            "type": "reliability",
            "labels": [m["model"] for m in models],
            "error_percent": [round(100 * m["attempt_failure_rate"], 2) for m in models],
            "p95_ms": [m["p95_ms"] for m in models],
        }
    if kind == Recommendation.Kind.RISING_ERRORS:
        daily = evidence.get("daily", [])
        return {
            "type": "daily_errors",
            "labels": [d["day"] for d in daily],
            "error_percent": [
                round(100 * d["errors"] / d["requests"], 2) if d["requests"] else None
                for d in daily
            ],
        }
    if kind == Recommendation.Kind.RUNAWAY_SPEND:
        daily = evidence.get("daily", [])
        return {
            "type": "daily_cost",
            "labels": [d["day"] for d in daily],
            "cost_micros": [d["cost_micros"] for d in daily],
        }
    if kind == Recommendation.Kind.ROUTING_POLICY:
        rules = evidence.get("rules", [])
        return {
            "type": "savings",
            "labels": [r["category"] for r in rules],
            "cost_micros": [r["monthly_saving_micros"] for r in rules],
        }
    return None


def _yaml(document: dict[str, Any] | None) -> str | None:
    return None if document is None else policy_document_dump(document=document, fmt="yaml")


@org_page()
def recommendations(request: OrgRequest) -> HttpResponse:
    org = request.org
    current = list(selectors.recommendations_of(org=org))
    history = list(
        selectors.recommendations_of(
            org=org,
            statuses=(
                Recommendation.Status.APPLIED,
                Recommendation.Status.DISMISSED,
                Recommendation.Status.REVERTED,
            ),
        ).order_by("-status_changed_at", "-id")[:HISTORY_ROWS]
    )
    thresholds = selectors.optimizer_settings_of(org=org)
    charts = {str(rec.pk): chart for rec in current if (chart := _chart(rec)) is not None}
    return render(
        request,
        "optimizer/recommendations.html",
        {
            "nav": "recommendations",
            "recommendations": current,
            "history": history,
            "total_saving_micros": sum(rec.monthly_saving_micros for rec in current),
            "last_run": selectors.last_run_of(org=org),
            "replays": selectors.replay_runs_of(org=org)[:REPLAY_ROWS],
            "can_act": _can_act(request),
            "settings_form": OptimizerSettingsForm(instance=thresholds),
            "draft_form": DraftPolicyReplayForm(),
            "chart_data": charts,
        },
    )


@org_page()
def recommendation_detail(request: OrgRequest, recommendation_id: int) -> HttpResponse:
    org = request.org
    rec = selectors.recommendation_of(org=org, recommendation_id=recommendation_id)
    before = after = None
    policy_name = None
    if rec.status == Recommendation.Status.APPLIED and rec.applied_policy_version is not None:
        version = rec.applied_policy_version
        policy_name = rec.apply_info.get("policy_name")
        after = version.document
        previous = rec.apply_info.get("previous_version")
        if previous is not None:
            old = version.policy.versions.filter(number=previous).first()
            before = old.document if old is not None else None
    elif rec.applicable:
        policy, before, after = services.recommendation_preview(org=org, rec=rec)
        policy_name = policy.name if policy is not None else None
    chart = _chart(rec)
    return render(
        request,
        "optimizer/detail.html",
        {
            "nav": "recommendations",
            "rec": rec,
            "evidence_json": json.dumps(rec.evidence, indent=2, sort_keys=True),
            "payload_json": json.dumps(rec.payload, indent=2, sort_keys=True),
            "before_yaml": _yaml(before),
            "after_yaml": _yaml(after),
            "policy_name": policy_name,
            "replays": rec.replay_runs.order_by("-created_at")[:REPLAY_ROWS],
            "can_act": _can_act(request),
            "replayable": rec.kind
            in (Recommendation.Kind.PRIMARY_MODEL, Recommendation.Kind.ROUTING_POLICY),
            "replay_form": ReplayForm(),
            "chart_data": {str(rec.pk): chart} if chart is not None else {},
        },
    )


@require_POST
@org_page(Role.ADMIN)
def recommendation_apply(request: OrgRequest, recommendation_id: int) -> HttpResponse:
    rec = services.recommendation_apply(
        org=request.org, actor=request.user, recommendation_id=recommendation_id
    )
    version = rec.applied_policy_version
    messages.success(
        request,
        f"Applied: policy {rec.apply_info.get('policy_name')!r} is now at version "
        f"{version.number if version else '?'}. You can revert it from this page.",
    )
    return redirect("dashboard:recommendation", recommendation_id)


@require_POST
@org_page(Role.ADMIN)
def recommendation_revert(request: OrgRequest, recommendation_id: int) -> HttpResponse:
    services.recommendation_revert(
        org=request.org, actor=request.user, recommendation_id=recommendation_id
    )
    messages.success(request, "Reverted: routing is back to what it was before.")
    return redirect("dashboard:recommendation", recommendation_id)


@require_POST
@org_page(Role.ADMIN)
def recommendation_dismiss(request: OrgRequest, recommendation_id: int) -> HttpResponse:
    services.recommendation_dismiss(
        org=request.org, actor=request.user, recommendation_id=recommendation_id
    )
    messages.success(request, "Dismissed. The same change will not be proposed again.")
    return redirect("dashboard:recommendations")


@require_POST
@org_page(Role.ADMIN)
def run_now(request: OrgRequest) -> HttpResponse:
    services.optimizer_run_request(org=request.org, actor=request.user)
    messages.success(request, "The optimizer is analysing your traffic; refresh in a moment.")
    return redirect("dashboard:recommendations")


@require_POST
@org_page(Role.ADMIN)
def settings_update(request: OrgRequest) -> HttpResponse:
    thresholds = selectors.optimizer_settings_of(org=request.org)
    form = OptimizerSettingsForm(request.POST, instance=thresholds)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        messages.error(request, f"{field}: {errors[0]}")
        return redirect("dashboard:recommendations")
    values = {name: form.cleaned_data[name] for name in services.SETTINGS_FIELDS}
    services.optimizer_settings_update(org=request.org, actor=request.user, values=values)
    messages.success(request, "Optimizer settings saved; they apply from the next run.")
    return redirect("dashboard:recommendations")


@require_POST
@org_page(Role.ADMIN)
def replay_create(request: OrgRequest) -> HttpResponse:
    recommendation_id = request.POST.get("recommendation")
    form: ReplayForm = (
        ReplayForm(request.POST) if recommendation_id else DraftPolicyReplayForm(request.POST)
    )
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        messages.error(request, f"{field}: {errors[0]}")
        return redirect("dashboard:recommendations")
    document = None
    rec_id = None
    if recommendation_id:
        try:
            rec_id = int(recommendation_id)
        except ValueError:
            rec_id = 0  # not found, like any other id that is not the org's
    else:
        document = policy_text_parse(text=form.cleaned_data["policy"]).document
    run = replay.replay_create(
        org=request.org,
        actor=request.user,
        sample_size=form.cleaned_data["sample_size"],
        recommendation_id=rec_id,
        policy_document=document,
    )
    return redirect("dashboard:replay", run.pk)


def _replay_context(request: OrgRequest, run: ReplayRun) -> dict[str, Any]:
    return {
        "nav": "recommendations",
        "run": run,
        "summary": selectors.replay_summary(run),
        "items": (run.results or {}).get("items", []),
        "can_act": _can_act(request),
        "available_micros": wallet_summary(org=request.org).available_micros,
        "refresh_seconds": PROGRESS_REFRESH_SECONDS,
        "policy_yaml": _yaml(run.policy_document),
    }


@org_page()
def replay_detail(request: OrgRequest, run_id: int) -> HttpResponse:
    run = selectors.replay_run_of(org=request.org, run_id=run_id)
    partial = request.headers.get("HX-Request") and request.GET.get("part") == "progress"
    template = "optimizer/_replay_progress.html" if partial else "optimizer/replay.html"
    return render(request, template, _replay_context(request, run))


@require_POST
@org_page(Role.ADMIN)
def replay_confirm(request: OrgRequest, run_id: int) -> HttpResponse:
    try:
        replay.replay_confirm(org=request.org, actor=request.user, run_id=run_id)
    except InsufficientCredit as exc:
        # Said on the confirmation page itself, with the status an API would give: 402.
        run = selectors.replay_run_of(org=request.org, run_id=run_id)
        context = {**_replay_context(request, run), "credit_error": exc.message}
        return render(request, "optimizer/replay.html", context, status=PAYMENT_REQUIRED)
    return redirect("dashboard:replay", run_id)


@require_POST
@org_page(Role.ADMIN)
def replay_cancel(request: OrgRequest, run_id: int) -> HttpResponse:
    replay.replay_cancel(org=request.org, actor=request.user, run_id=run_id)
    messages.success(request, "Replay cancelled.")
    return redirect("dashboard:replay", run_id)
