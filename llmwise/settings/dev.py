"""The embedded default: what ``manage.py`` and a plain ``uvicorn llmwise.asgi:application`` use."""

from .base import *  # noqa: F403
from .base import SECRET_KEY, env

DEBUG = env.bool("DEBUG", default=True)
# A fixed development key keeps sessions valid across restarts; production has no default.
SECRET_KEY = SECRET_KEY or "dev-only-insecure-key-change-me"
# GET /metrics answers loopback clients without a token (docs/operations.md).
METRICS_ALLOW_LOOPBACK = env.bool("METRICS_ALLOW_LOOPBACK", default=True)
