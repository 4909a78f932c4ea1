"""Production settings: every secret comes from the environment, with no default.

Importing this module without one of them stops the process with a message naming it.
"""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import BASE_DIR, env, log_format_use

# FIELD_ENCRYPTION_KEYS: without it stored provider keys would be encrypted under a key derived
# from SECRET_KEY, so rotating SECRET_KEY would make them unreadable.
REQUIRED = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "FIELD_ENCRYPTION_KEYS")
_missing = [name for name in REQUIRED if not env.str(name, default="")]
if _missing:
    raise ImproperlyConfigured(
        "Production settings need these environment variables: " + ", ".join(_missing)
    )

DEBUG = False
SECRET_KEY = env.str("SECRET_KEY")
if env.bool("STRIPE_SANDBOX", default=False):
    raise ImproperlyConfigured(
        "STRIPE_SANDBOX is a test-mode fake and cannot run with production settings."
    )
STRIPE_SANDBOX = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = False
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / "var" / "staticfiles"))

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# One JSON object per log line, with the request id (docs/operations.md); LOG_FORMAT=text opts out.
log_format_use(env.str("LOG_FORMAT", default="json"))
# /metrics needs METRICS_TOKEN here: without it the endpoint answers 404 to everyone.
METRICS_ALLOW_LOOPBACK = False
