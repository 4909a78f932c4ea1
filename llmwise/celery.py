"""The Celery application.

With ``REDIS_URL`` set, Redis is the broker and separate worker and beat processes run the jobs
(``celery -A llmwise worker`` / ``celery -A llmwise beat``). In the embedded default tasks run
eagerly in-process and :mod:`llmwise.embedded` plays the part of beat.
"""

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmwise.settings.dev")

app = Celery("llmwise")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

HEARTBEAT_CACHE_KEY = "celery:heartbeat"


@app.task(name="llmwise.heartbeat", ignore_result=True)
def heartbeat(stamp: str | None = None) -> None:
    """Periodic liveness mark: proves beat (or the embedded scheduler) and a worker both run."""
    from django.core.cache import cache
    from django.utils import timezone

    cache.set(HEARTBEAT_CACHE_KEY, stamp or timezone.now().isoformat(), timeout=None)


@signals.worker_init.connect
def _worker_observability(**kwargs: Any) -> None:
    """Sentry and tracing in the worker, when configured (before it forks its pool)."""
    from llmwise.observability import observability_init

    observability_init()


_log_tokens: dict[str, Any] = {}  # task id → what to restore when it ends


@signals.task_prerun.connect
def _task_log_context(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    """Every log line of a task carries its id and name (docs/operations.md)."""
    from llmwise.logging import log_context_push

    if task_id:
        _log_tokens[task_id] = log_context_push(task_id=task_id, task=getattr(task, "name", None))


@signals.task_postrun.connect
def _task_log_context_end(task_id: str | None = None, **kwargs: Any) -> None:
    from llmwise.logging import log_context_pop

    token = _log_tokens.pop(task_id or "", None)
    if token is not None:
        log_context_pop(token)


@signals.task_failure.connect
def _task_failure_counted(sender: Any = None, **kwargs: Any) -> None:
    """For /metrics: llmwise_celery_task_failures_total."""
    from llmwise.metrics import task_failed

    task_failed(getattr(sender, "name", None) or "unknown")
