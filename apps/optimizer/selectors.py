"""Reads of optimizer data. Organization first, always: another org's rows are not found."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import Organization
from apps.gateway.models import RoutingPolicy
from llmwise.errors import NotFound

from .models import OptimizerRun, OptimizerSettings, Recommendation, ReplayRun
from .recommend import Quality

QUALITY_HISTORY_DAYS = 90  # judged replays older than this no longer speak for a model
VERDICTS = ("win", "tie", "loss")


def optimizer_settings_of(*, org: Organization) -> OptimizerSettings:
    """``org``'s thresholds, created with the defaults on first use."""
    settings, _created = OptimizerSettings.objects.get_or_create(organization=org)
    return settings


def recommendations_of(
    *, org: Organization, statuses: tuple[str, ...] | None = (Recommendation.Status.NEW,)
) -> QuerySet[Recommendation]:
    rows = Recommendation.objects.filter(organization=org)
    if statuses is not None:
        rows = rows.filter(status__in=statuses)
    return rows.select_related("applied_policy_version", "status_changed_by")


def recommendation_of(*, org: Organization, recommendation_id: int) -> Recommendation:
    found = recommendations_of(org=org, statuses=None).filter(pk=recommendation_id).first()
    if found is None:
        raise NotFound("Recommendation not found.", code="recommendation_not_found")
    return found


def replay_runs_of(*, org: Organization) -> QuerySet[ReplayRun]:
    return ReplayRun.objects.filter(organization=org).select_related("recommendation")


def replay_run_of(*, org: Organization, run_id: int) -> ReplayRun:
    found = replay_runs_of(org=org).filter(pk=run_id).first()
    if found is None:
        raise NotFound("Replay run not found.", code="replay_run_not_found")
    return found


def last_run_of(*, org: Organization) -> OptimizerRun | None:
    return OptimizerRun.objects.filter(organization=org).order_by("-started_at", "-id").first()


def replay_quality(
    *, org: Organization, now: datetime | None = None
) -> dict[tuple[str, str], Quality]:
    """The judge's verdicts of ``org``'s finished replays, per (candidate model, category)."""
    since = (now or timezone.now()) - timedelta(days=QUALITY_HISTORY_DAYS)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(VERDICTS, 0))
    runs = ReplayRun.objects.filter(
        organization=org,
        status__in=(ReplayRun.Status.DONE, ReplayRun.Status.CANCELLED),
        created_at__gte=since,
    ).values_list("results", flat=True)
    for results in runs:
        for item in (results or {}).get("items", []):
            verdict = item.get("verdict")
            if verdict in VERDICTS and item.get("candidate_model") and item.get("category"):
                counts[(item["candidate_model"], item["category"])][verdict] += 1
    return {
        key: Quality(
            judged=sum(value.values()),
            wins=value["win"],
            ties=value["tie"],
            losses=value["loss"],
        )
        for key, value in counts.items()
    }


def default_policy_of(*, org: Organization) -> RoutingPolicy | None:
    return (
        RoutingPolicy.objects.filter(organization=org, is_default=True)
        .select_related("current_version")
        .first()
    )


def replay_summary(run: ReplayRun) -> dict[str, Any]:
    """The run's summary block (computed by the job; empty until it has items)."""
    return dict((run.results or {}).get("summary", {}))
