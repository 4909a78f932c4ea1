"""Reads of orchestration runs, always within one organization."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from apps.accounts.models import Organization
from apps.gateway.models import RequestLog
from llmwise.errors import NotFound

from .models import OrchestrationRun


def run_of(*, org: Organization, request_id: str) -> OrchestrationRun:
    """One of ``org``'s runs; another tenant's is simply not found."""
    run = OrchestrationRun.objects.filter(organization=org, request_id=request_id).first()
    if run is None:
        raise NotFound(f"No run {request_id!r} in this organization.", code="run_not_found")
    return run


def run_children(*, org: Organization, run: OrchestrationRun) -> QuerySet[RequestLog]:
    """The run's child calls (candidates, then synthesis or judging), oldest first."""
    return RequestLog.objects.filter(organization=org, parent_request_id=run.request_id).order_by(
        "created_at", "pk"
    )


def runs_of(*, org: Organization, limit: int = 20) -> QuerySet[OrchestrationRun]:
    return OrchestrationRun.objects.filter(organization=org).order_by("-created_at")[:limit]


def run_data(*, org: Organization, request_id: str) -> dict[str, Any]:
    """A run and its child calls as the API shows them: metadata only, never texts."""
    run = run_of(org=org, request_id=request_id)
    children = [
        {
            "request_id": log.request_id,
            "model": log.model or log.requested_model,
            "status": log.status,
            "http_status": log.http_status,
            "error_code": log.error_code or None,
            "prompt_tokens": log.prompt_tokens,
            "completion_tokens": log.completion_tokens,
            "cost_micros": log.cost_micros,
            "latency_ms": log.latency_ms,
        }
        for log in run_children(org=org, run=run)
    ]
    return {
        "id": run.request_id,
        "object": "orchestration.run",
        "mode": run.mode,
        "status": run.status,
        "models": run.model_ids,
        "options": run.options,
        "stream": run.stream,
        "error_code": run.error_code or None,
        "reserved_micros": run.reserved_micros,
        "cost_micros": run.cost_micros,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "calls": run.calls,
        "failed_calls": run.failed_calls,
        "latency_ms": run.latency_ms,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "children": children,
    }
