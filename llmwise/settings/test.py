"""Test settings: the same stack as production shape when DATABASE_URL/REDIS_URL are set.

pytest-xdist runs several workers; each gets its own Redis database so that clearing the cache
in one worker never touches another's keys.
"""

import os

from .base import *  # noqa: F403
from .base import CACHES, CHANNEL_LAYERS, DATABASES, REDIS_URL, channel_layer_host

SECRET_KEY = "test-only-secret-key"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# Pooled connections outlive pytest-django's test-database switch; plain connections don't.
DATABASES["default"].get("OPTIONS", {}).pop("pool", None)
# The test servers' async pools (llmwise/adb.py) stay small: PostgreSQL's 100 connections are
# shared by every xdist worker, and the wallet concurrency tests open 40 at once.
GATEWAY_DB_CONNECTIONS = 2

_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_worker_index = int(_worker.removeprefix("gw") or 0)
if REDIS_URL:
    # Worker N of a run on redis://host/D uses database D+1+N, so two runs given different D
    # (and different database names in DATABASE_URL) can share one machine.
    _redis_base, _, _redis_db = REDIS_URL.rstrip("/").rpartition("/")
    if not _redis_db.isdigit():
        _redis_base, _redis_db = REDIS_URL.rstrip("/"), "0"
    _worker_redis = f"{_redis_base}/{(int(_redis_db) + 1 + _worker_index) % 16}"
    CACHES["default"]["LOCATION"] = _worker_redis
    CHANNEL_LAYERS["default"]["CONFIG"] = {
        "hosts": [channel_layer_host(_worker_redis)],
        "prefix": "llmwise:ch",
    }

CELERY_TASK_ALWAYS_EAGER = True
ACCOUNT_RATE_LIMITS = False
