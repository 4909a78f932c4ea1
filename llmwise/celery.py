"""The Celery application.

With ``REDIS_URL`` set, Redis is the broker and separate worker and beat processes run the jobs
(``celery -A llmwise worker`` / ``celery -A llmwise beat``). In the embedded default tasks run
eagerly in-process and :mod:`llmwise.embedded` plays the part of beat.
"""

import os

from celery import Celery

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
