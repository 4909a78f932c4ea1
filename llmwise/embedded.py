"""In-process stand-in for Celery beat in the embedded default.

When no broker is configured, the ASGI lifespan starts :class:`EmbeddedScheduler`, which runs every
entry of ``CELERY_BEAT_SCHEDULE`` on its interval in a daemon thread, calling the very same Celery
task functions that beat would enqueue in production. Task code stays identical in both shapes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import close_old_connections

from llmwise import metrics

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class EmbeddedScheduler:
    """Runs periodic tasks on their intervals until :meth:`stop` is called."""

    def __init__(self, schedule: dict[str, dict[str, Any]] | None = None) -> None:
        self.schedule = dict(settings.CELERY_BEAT_SCHEDULE if schedule is None else schedule)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs: dict[str, int] = dict.fromkeys(self.schedule, 0)

    def start(self) -> None:
        # Beat entries name tasks by dotted path; make sure every app's tasks module is loaded
        # (a worker does this at start; this process may not have imported them yet).
        current_app.loader.import_default_modules()
        if self._thread is None and self.schedule:
            self._thread = threading.Thread(target=self._loop, name="embedded-beat", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        next_due = {name: time.monotonic() for name in self.schedule}
        while not self._stop.is_set():
            now = time.monotonic()
            for name, entry in self.schedule.items():
                if now >= next_due[name]:
                    next_due[name] = now + float(entry["schedule"])
                    self._run(name, entry)
            self._stop.wait(TICK_SECONDS)

    def _run(self, name: str, entry: dict[str, Any]) -> None:
        task = current_app.tasks[entry["task"]]
        try:
            close_old_connections()
            task.apply(args=entry.get("args", ()), kwargs=entry.get("kwargs", {}))
            self.runs[name] += 1
        except Exception:
            logger.exception("embedded periodic task %s failed", name)
            metrics.task_failed(task.name)  # eager tasks raise here instead of signalling
        finally:
            close_old_connections()
