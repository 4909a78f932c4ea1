"""Settings shared by every environment.

Everything that differs between machines comes from the environment (see README, "Configuration").
Two shapes run the same code: the *embedded default* (no ``REDIS_URL``: SQLite, in-process cache,
channel layer and jobs) and the *scale-out* shape (``DATABASE_URL`` + ``REDIS_URL``: PostgreSQL,
Redis, Celery workers and beat). Only settings differ between them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# A local .env is convenient for developers; the environment always wins.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- core -------------------------------------------------------------------------------------
DEBUG = False
SECRET_KEY: str = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL: str = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")
SITE_ID = 1

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Redoc served from our static files, no CDN
    "channels",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.google",
    "apps.accounts",
    "apps.wallet",
    "apps.gateway",
    "apps.orchestration",
    "apps.optimizer",
    "apps.dashboard",
]

MIDDLEWARE = [
    "llmwise.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "llmwise.csp.ContentSecurityPolicyMiddleware",
    "llmwise.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "apps.accounts.middleware.RateLimitStatusMiddleware",
    "apps.accounts.middleware.CurrentOrganizationMiddleware",
    # Last, so its process_exception runs first: a database outage answers 503, not 500.
    "llmwise.outage.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "llmwise.urls"
ASGI_APPLICATION = "llmwise.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.organization",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------------
DATABASE_URL: str = env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'llmwise.db'}")


def database_from_url(url: str) -> dict[str, Any]:
    """Turn DATABASE_URL into Django's dict, tuned per engine."""
    config: dict[str, Any] = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        if config["NAME"] not in ("", ":memory:"):
            Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers run beside the writer; IMMEDIATE makes writers queue instead of
        # failing with "database is locked" half-way through a transaction.
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    elif config["ENGINE"] in (
        "django.db.backends.postgresql",
        "django.db.backends.postgresql_psycopg2",
    ):
        config["ENGINE"] = "django.db.backends.postgresql"
        config["OPTIONS"] = {
            "pool": {
                "min_size": 2,
                "max_size": env.int("DB_POOL_MAX", default=20),
                # How long a request waits for a connection (all busy, or the server restarting)
                # before it fails with a 503 (llmwise/outage.py); psycopg's default is 30 s.
                "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=10.0),
            }
        }
        config["CONN_MAX_AGE"] = 0
        # A pooled connection is checked (one empty query) as it leaves the pool: after a
        # database restart the pooled ones are dead and would each fail a request.
        config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache, channel layer, jobs: Redis when configured, in-process otherwise -----------------
REDIS_URL: str = env.str("REDIS_URL", default="")
EMBEDDED = not REDIS_URL

# Seconds one Redis call of the cache may take (connect, reply) before it fails; retried once,
# at once. redis-py's own default (5 s, ten retries with back-off) would hold a request for
# a minute when Redis hangs.
REDIS_TIMEOUT_SECONDS: float = env.float("REDIS_TIMEOUT_SECONDS", default=1.0)


def redis_cache_options(timeout: float) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }


# channels_redis waits for a consumer's next message with a blocking pop of 5 s, and redis-py
# (8.x) reads every reply with a 5 s socket timeout by default: the two raced, and a WebSocket
# consumer idle for 5 s could die with "Timeout reading from Redis". The read timeout of the
# channel layer's connections must outlast the pop.
CHANNEL_LAYER_SOCKET_TIMEOUT_SECONDS = 15


def channel_layer_host(url: str) -> dict[str, Any]:
    return {"address": url, "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT_SECONDS}


if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "llmwise",
            "OPTIONS": redis_cache_options(REDIS_TIMEOUT_SECONDS),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [channel_layer_host(REDIS_URL)], "prefix": "llmwise:ch"},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # No broker in the embedded default: on-demand tasks run in-process (eagerly) and the
    # periodic ones are driven by llmwise.embedded.EmbeddedScheduler from the ASGI lifespan.
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True

CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Workers log through LOGGING (JSON in production, with the task id) instead of Celery's own setup.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
# Periodic jobs: {name: {"task": dotted name, "schedule": seconds}}. Later apps add entries.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "heartbeat": {"task": "llmwise.heartbeat", "schedule": 60.0},
}

# --- auth and accounts ------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard:overview"
ACCOUNT_LOGOUT_REDIRECT_URL = "landing"

ACCOUNT_ADAPTER = "apps.accounts.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[LLMWise] "
ACCOUNT_PREVENT_ENUMERATION = True

# Social login appears only when its credentials are configured.
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, Any]] = {}
for _provider, _prefix in (("github", "GITHUB"), ("google", "GOOGLE")):
    _client_id = env.str(f"{_prefix}_CLIENT_ID", default="")
    _secret = env.str(f"{_prefix}_CLIENT_SECRET", default="")
    if _client_id and _secret:
        SOCIALACCOUNT_PROVIDERS[_provider] = {
            "APPS": [{"client_id": _client_id, "secret": _secret, "key": ""}],
            "SCOPE": ["user:email"] if _provider == "github" else ["profile", "email"],
        }
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = False

# --- email ------------------------------------------------------------------------------------
DEFAULT_FROM_EMAIL: str = env.str("DEFAULT_FROM_EMAIL", default="LLMWise <no-reply@llmwise.local>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_URL: str = env.str("EMAIL_URL", default="")
if EMAIL_URL:
    vars().update(environ.Env.email_url_config(EMAIL_URL))
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# --- payments and providers (used by the wallet and gateway apps) -----------------------------
STRIPE_SECRET_KEY: str = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY: str = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET: str = env.str("STRIPE_WEBHOOK_SECRET", default="")
PROVIDER_KEYS: dict[str, str] = {
    name: env.str(f"{name.upper()}_API_KEY", default="")
    for name in (
        "openai",
        "anthropic",
        "gemini",
        "openrouter",
        "mistral",
        "groq",
        "deepseek",
        "xai",
        "together",
    )
}

# --- API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "llmwise.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLMWise API",
    "DESCRIPTION": "One endpoint, every AI provider.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}
API_KEY_LAST_USED_INTERVAL = 60  # seconds between last-used writes for one key
# Largest request body accepted (a longer one is answered 413 before anything else happens).
DATA_UPLOAD_MAX_MEMORY_SIZE: int = env.int("MAX_REQUEST_BODY_BYTES", default=4 * 1024 * 1024)

# --- i18n, static -----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- invitations, trial, misc -----------------------------------------------------------------
INVITATION_TTL_DAYS: int = env.int("INVITATION_TTL_DAYS", default=7)
NEWSLETTER_TOKEN_MAX_AGE_DAYS = 14

# LOG_FORMAT: "text" (human-readable, the default here and in dev) or "json" (one object per line
# with the request id and organization, the production default): llmwise/logging.py.
LOG_FORMATS = ("text", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {
            "()": "llmwise.logging.TextFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(context)s%(message)s",
        },
        "json": {"()": "llmwise.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "text"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.db.backends": {"level": "WARNING"},
        # One line per successful task is noise; failures still log at ERROR.
        "celery.app.trace": {"level": "WARNING"},
    },
}


def log_format_use(name: str) -> None:
    """Write every line of this process in ``name`` ("text" or "json"). JSON also takes over
    uvicorn's own loggers, so a log collector gets nothing but JSON from the web process."""
    if name not in LOG_FORMATS:
        raise ImproperlyConfigured(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}.")
    config: Any = LOGGING
    config["handlers"]["console"]["formatter"] = name
    uvicorn = {"handlers": ["console"], "level": "INFO", "propagate": False}
    # uvicorn has configured its loggers before it imports the app: an access logger without
    # handlers means --no-access-log, which must stay off (configuring "uvicorn" would otherwise
    # reset its child to propagate into the console handler).
    access_on = bool(logging.getLogger("uvicorn.access").handlers)
    for logger in ("uvicorn", "uvicorn.access"):
        if name != "json":
            config["loggers"].pop(logger, None)
        elif logger == "uvicorn.access" and not access_on:
            config["loggers"][logger] = {"handlers": [], "propagate": False}
        else:
            config["loggers"][logger] = dict(uvicorn)


log_format_use(env.str("LOG_FORMAT", default="text"))

# --- wallet -----------------------------------------------------------------------------------
# Trial credit (micro-USD) granted once per personal organization, after email verification.
TRIAL_CREDIT_MICROS: int = env.int("TRIAL_CREDIT_MICROS", default=1_000_000)
WALLET_PURCHASE_MIN_MICROS = 5_000_000  # $5
WALLET_PURCHASE_MAX_MICROS = 10_000_000_000  # $10,000
WALLET_PURCHASE_PRESETS_USD = (10, 25, 50, 100)
# A held reservation this long past its expiry means the sweeper is not running (wallet_audit).
WALLET_SWEEP_GRACE_SECONDS = 600
CELERY_BEAT_SCHEDULE.update(
    {
        "wallet-release-expired-reservations": {
            "task": "apps.wallet.tasks.release_expired_reservations",
            "schedule": 60.0,
        }
    }
)
# Stripe: empty STRIPE_API_BASE means the real Stripe. With no STRIPE_SECRET_KEY the embedded
# default serves a fake Stripe (apps.wallet.stripe_sandbox) at /_sandbox/stripe/ with test-mode
# keys, so a purchase completes in the browser. Never in production: prod needs REDIS_URL, so
# it is never EMBEDDED, and STRIPE_SANDBOX defaults off there.
STRIPE_SANDBOX: bool = env.bool("STRIPE_SANDBOX", default=EMBEDDED and not STRIPE_SECRET_KEY)
STRIPE_SANDBOX_PREFIX = "/_sandbox/stripe"
STRIPE_API_BASE: str = env.str("STRIPE_API_BASE", default="").rstrip("/")
if STRIPE_SANDBOX:
    STRIPE_SECRET_KEY = STRIPE_SECRET_KEY or "sk_test_llmwise_sandbox"
    STRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET or "whsec_llmwise_sandbox"
    STRIPE_API_BASE = STRIPE_API_BASE or SITE_URL + STRIPE_SANDBOX_PREFIX

# --- gateway providers ------------------------------------------------------------------------
# Real API base URLs, as the official SDKs spell them (OpenAI-shaped hosts include /v1).
PROVIDER_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "openrouter": "https://openrouter.ai/api/v1",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "xai": "https://api.x.ai/v1",
    "together": "https://api.together.xyz/v1",
}
for _name in PROVIDER_BASE_URLS:
    PROVIDER_BASE_URLS[_name] = env.str(
        f"{_name.upper()}_BASE_URL", default=PROVIDER_BASE_URLS[_name]
    ).rstrip("/")
# The sandbox upstreams (apps.gateway.sandbox). PROVIDER_SANDBOX sends every provider there;
# PROVIDER_SANDBOX_KEYLESS sends there each provider without a platform key, which is the
# embedded default's behaviour (never production: prod needs REDIS_URL, so it is not EMBEDDED).
# PROVIDER_SANDBOX_URL is where the sandbox listens; whoever starts a SandboxServer sets it.
PROVIDER_SANDBOX: bool = env.bool("PROVIDER_SANDBOX", default=False)
PROVIDER_SANDBOX_KEYLESS: bool = env.bool("PROVIDER_SANDBOX_KEYLESS", default=EMBEDDED)
PROVIDER_SANDBOX_URL: str = env.str("PROVIDER_SANDBOX_URL", default="").rstrip("/")
# Seconds: connect, wait for the first byte (and between stream chunks), whole call.
PROVIDER_TIMEOUTS: dict[str, float] = {
    "connect": env.float("PROVIDER_CONNECT_TIMEOUT", default=5.0),
    "first_byte": env.float("PROVIDER_FIRST_BYTE_TIMEOUT", default=60.0),
    "total": env.float("PROVIDER_TOTAL_TIMEOUT", default=600.0),
}
PROVIDER_HTTP_MAX_CONNECTIONS: int = env.int("PROVIDER_HTTP_MAX_CONNECTIONS", default=1000)
# Threads (each with its own database connection, from DB_POOL_MAX) that run the chat calls'
# reserve/settle statements on the lean API path (llmwise/http.py), per server process.
GATEWAY_DB_THREADS: int = env.int("GATEWAY_DB_THREADS", default=8)
# On PostgreSQL the chat calls' reserve and settle + log statements run from the event loop on
# their own pool of this many connections per server process (llmwise/adb.py).
GATEWAY_DB_CONNECTIONS: int = env.int("GATEWAY_DB_CONNECTIONS", default=8)
# Those connections prepare their statements on the server (parsed and planned once per
# connection). Switch off behind a pooler that cannot keep prepared statements apart per client
# (PgBouncer in transaction mode before 1.21, or without max_prepared_statements).
GATEWAY_DB_PREPARED_STATEMENTS: bool = env.bool("GATEWAY_DB_PREPARED_STATEMENTS", default=True)
# How long a call's credit hold lives before the sweeper may free it (a worker killed mid-call).
# Keep it above PROVIDER_TOTAL_TIMEOUT: a hold must outlive the longest call.
GATEWAY_RESERVATION_TTL_SECONDS: int = env.int("GATEWAY_RESERVATION_TTL_SECONDS", default=900)
# How long a call that has its answer keeps retrying its settle while the database is
# unreachable (a restart) before it gives up unbilled (docs/resilience.md).
GATEWAY_SETTLE_RETRY_SECONDS: float = env.float("GATEWAY_SETTLE_RETRY_SECONDS", default=5.0)

# --- gateway limits ---------------------------------------------------------------------------
# Shared counters (rate limits now; health, breakers and cooldowns later): "redis" or "memory";
# empty picks Redis when the default cache is on Redis (same server and database as the cache,
# unless GATEWAY_COUNTERS_REDIS_URL names another), in-process memory otherwise.
GATEWAY_COUNTERS_BACKEND: str = env.str("GATEWAY_COUNTERS_BACKEND", default="")
GATEWAY_COUNTERS_REDIS_URL: str = env.str("GATEWAY_COUNTERS_REDIS_URL", default="")
# The in-process backend forgets the oldest windows beyond this many live entries.
GATEWAY_COUNTERS_MAX_ENTRIES: int = env.int("GATEWAY_COUNTERS_MAX_ENTRIES", default=100_000)
# Redis counters: a call that takes longer than this (connect or reply) counts as Redis being
# unreachable; the process then counts in its own memory (limits, health and breakers per
# process) and tries Redis again every GATEWAY_COUNTERS_RETRY_SECONDS (docs/providers.md).
GATEWAY_COUNTERS_TIMEOUT_SECONDS: float = env.float("GATEWAY_COUNTERS_TIMEOUT_SECONDS", default=0.5)
GATEWAY_COUNTERS_RETRY_SECONDS: float = env.float("GATEWAY_COUNTERS_RETRY_SECONDS", default=5.0)
# Length of the RPM/TPM windows in seconds ("per minute"; tests shrink it).
GATEWAY_LIMITS_WINDOW_SECONDS: int = env.int("GATEWAY_LIMITS_WINDOW_SECONDS", default=60)
# Per-organization ceilings over all its keys; 0 means no limit. Generous: they stop runaway
# traffic, the per-key limits are the ones customers tune.
GATEWAY_ORG_RPM: int = env.int("GATEWAY_ORG_RPM", default=10_000)
GATEWAY_ORG_TPM: int = env.int("GATEWAY_ORG_TPM", default=20_000_000)
# How long a key's lifetime spend, summed from the request log, is trusted before re-reading it.
GATEWAY_SPEND_CACHE_SECONDS: int = env.int("GATEWAY_SPEND_CACHE_SECONDS", default=60)

# --- BYOK encryption --------------------------------------------------------------------------
# Keys that encrypt stored provider keys (apps.gateway.encryption): comma-separated, newest first,
# each a random string of at least 32 characters (e.g. `openssl rand -hex 32`). New secrets are
# encrypted with the first; every listed key still decrypts, so rotation is: prepend a key, run
# `manage.py rotate_encryption_keys`, then drop the old one. Empty (dev, test) derives one key
# from SECRET_KEY; production refuses to start without it (settings/prod.py).
FIELD_ENCRYPTION_KEYS: list[str] = env.list("FIELD_ENCRYPTION_KEYS", default=[])
# How long a process reuses an organization's decrypted provider key (or the fact that it has
# none) before reading it again. Setting or removing a key clears it at once in the process
# that did it; other processes see the change within this many seconds.
BYOK_CREDENTIAL_CACHE_SECONDS: float = env.float("BYOK_CREDENTIAL_CACHE_SECONDS", default=5.0)
# "Last used" is written at most this often per key, so a busy BYOK org costs no write per call.
BYOK_LAST_USED_INTERVAL_SECONDS = 60
# The "verify key" call: one tiny completion, so fail fast.
BYOK_VERIFY_TIMEOUT_SECONDS: float = 15.0

# --- API reference ----------------------------------------------------------------------------
# The gateway's async endpoints are not DRF views: apps.gateway.openapi describes them by hand and
# merges them into the generated schema. drf-spectacular's default enum hook stays first.
SPECTACULAR_SETTINGS.update(
    {
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            "apps.gateway.openapi.gateway_paths_hook",
            # After the gateway's: it uses the gateway's components (errors, usage, cost).
            "apps.orchestration.openapi.orchestration_paths_hook",
        ],
        # Redoc's bundle comes from drf-spectacular-sidecar's static files, never a CDN.
        "REDOC_DIST": "SIDECAR",
        "REDOC_UI_SETTINGS": {
            "expandResponses": "200",
            "jsonSampleExpandLevel": 3,
            "pathInMiddlePanel": True,
            "scrollYOffset": 48,  # the docs bar above Redoc (templates/docs/reference.html)
            # System fonts: Redoc's default fonts would be fetched from Google.
            "theme": {
                "typography": {
                    "fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
                    "headings": {"fontFamily": "system-ui, -apple-system, 'Segoe UI', sans-serif"},
                    "code": {"fontFamily": "ui-monospace, SFMono-Regular, Menlo, monospace"},
                }
            },
        },
    }
)

# --- routing ----------------------------------------------------------------------------------
# Mesh failover and provider health (apps.gateway.routing.health, docs/routing.md). Health stats
# and breakers live in the shared counters (GATEWAY_COUNTERS_BACKEND): Redis when configured, so
# every worker and server process sees the same state; in-process memory otherwise.
# Rolling window of the error rate and latency shown per provider+model, and of the breaker.
GATEWAY_MESH_WINDOW_SECONDS: float = env.float("GATEWAY_MESH_WINDOW_SECONDS", default=30.0)
# The breaker opens when at least MIN_CALLS calls in the window failed at ERROR_RATE or more.
GATEWAY_MESH_BREAKER_MIN_CALLS: int = env.int("GATEWAY_MESH_BREAKER_MIN_CALLS", default=5)
GATEWAY_MESH_BREAKER_ERROR_RATE: float = env.float("GATEWAY_MESH_BREAKER_ERROR_RATE", default=0.5)
# The same rule also runs over this shorter window, so a busy model (many successes in the long
# window) that starts failing outright is cut off within seconds, not after half the long window.
GATEWAY_MESH_BREAKER_FAST_WINDOW_SECONDS: float = env.float(
    "GATEWAY_MESH_BREAKER_FAST_WINDOW_SECONDS", default=5.0
)
# Open → half-open after this long; then exactly one probe call at a time decides.
GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS: float = env.float(
    "GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS", default=10.0
)
# A probe that never reports back (its process died) frees the probe slot after this long.
GATEWAY_MESH_PROBE_TIMEOUT_SECONDS: float = env.float(
    "GATEWAY_MESH_PROBE_TIMEOUT_SECONDS", default=30.0
)
# How long a process trusts its copy of a breaker's shared state (bounds how fast other
# processes' trips and recoveries reach it; its own apply at once).
GATEWAY_MESH_STATE_CACHE_SECONDS: float = env.float("GATEWAY_MESH_STATE_CACHE_SECONDS", default=1.0)
# Sustained 429s from these providers (one account-wide rate limit) cool the whole provider down:
# at least COUNT 429s within WINDOW seconds → skipped for max(COOLDOWN, Retry-After), at most MAX.
GATEWAY_MESH_RATE_LIMIT_PROVIDERS: list[str] = env.list(
    "GATEWAY_MESH_RATE_LIMIT_PROVIDERS", default=["openrouter"]
)
GATEWAY_MESH_RATE_LIMIT_COUNT: int = env.int("GATEWAY_MESH_RATE_LIMIT_COUNT", default=3)
GATEWAY_MESH_RATE_LIMIT_WINDOW_SECONDS: float = env.float(
    "GATEWAY_MESH_RATE_LIMIT_WINDOW_SECONDS", default=10.0
)
GATEWAY_MESH_RATE_LIMIT_COOLDOWN_SECONDS: float = env.float(
    "GATEWAY_MESH_RATE_LIMIT_COOLDOWN_SECONDS", default=5.0
)
GATEWAY_MESH_RATE_LIMIT_COOLDOWN_MAX_SECONDS: float = env.float(
    "GATEWAY_MESH_RATE_LIMIT_COOLDOWN_MAX_SECONDS", default=60.0
)
# Most models one request may chain (the requested model plus its fallbacks).
GATEWAY_MESH_MAX_CHAIN: int = env.int("GATEWAY_MESH_MAX_CHAIN", default=5)
# `"mesh": true` without an organization policy: the alternatives per tier, in order. An empty
# list means "same-tier models of other providers from the catalog, cheapest first".
GATEWAY_MESH_DEFAULT_CHAINS: dict[str, list[str]] = {
    "budget": env.list("GATEWAY_MESH_CHAIN_BUDGET", default=[]),
    "standard": env.list("GATEWAY_MESH_CHAIN_STANDARD", default=[]),
    "frontier": env.list("GATEWAY_MESH_CHAIN_FRONTIER", default=[]),
}
# Which routing policy a request runs under (its key's pin, the org default) is remembered
# in-process this long: a policy change applies at once in the process that made it, in the
# others within this delay. Without it every request would cost two queries.
GATEWAY_POLICY_CACHE_SECONDS: float = env.float("GATEWAY_POLICY_CACHE_SECONDS", default=5.0)

# --- analytics --------------------------------------------------------------------------------
# Usage rollups (apps.gateway.rollups, docs/analytics.md): the request log folded into hourly and
# daily aggregates every minute; the Overview page reads only those. Rows younger than the lag
# wait for the next run, so a row whose transaction commits out of id order is never skipped.
ANALYTICS_ROLLUP_LAG_SECONDS: int = env.int("ANALYTICS_ROLLUP_LAG_SECONDS", default=10)
CELERY_BEAT_SCHEDULE.update(
    {
        "gateway-rollups-update": {
            "task": "apps.gateway.tasks.rollups_update_task",
            "schedule": 60.0,
        }
    }
)

# --- orchestration ---
# Compare / Blend / Judge (apps.orchestration, docs/orchestration.md): one prompt, several models.
# Most models one request may fan out to (compare candidates; judge's generated candidates).
ORCHESTRATION_MAX_MODELS: int = env.int("ORCHESTRATION_MAX_MODELS", default=5)
# Most candidates a caller may hand to the judge, and the longest one (characters).
ORCHESTRATION_MAX_CANDIDATES: int = env.int("ORCHESTRATION_MAX_CANDIDATES", default=8)
ORCHESTRATION_CANDIDATE_MAX_CHARS: int = env.int(
    "ORCHESTRATION_CANDIDATE_MAX_CHARS", default=20_000
)
# Runs in flight at once per organization (in the shared counters: Redis when configured).
ORCHESTRATION_MAX_CONCURRENT_PER_ORG: int = env.int(
    "ORCHESTRATION_MAX_CONCURRENT_PER_ORG", default=4
)
# The whole run (candidates + synthesis/judging); calls still running then are cancelled.
ORCHESTRATION_TIMEOUT_SECONDS: float = env.float("ORCHESTRATION_TIMEOUT_SECONDS", default=120.0)
# Used when a Blend names no synthesizer / a Judge or best-of Blend names no judge.
ORCHESTRATION_DEFAULT_SYNTHESIZER: str = env.str(
    "ORCHESTRATION_DEFAULT_SYNTHESIZER", default="gpt-4o-mini"
)
ORCHESTRATION_DEFAULT_JUDGE: str = env.str("ORCHESTRATION_DEFAULT_JUDGE", default="gpt-4o-mini")
# The judge's answer is a small JSON object; this caps what its call may cost.
ORCHESTRATION_JUDGE_MAX_TOKENS: int = env.int("ORCHESTRATION_JUDGE_MAX_TOKENS", default=1024)

# --- optimizer ---
# Recommendations mined from request history and the replay lab (apps.optimizer,
# docs/optimizer.md). The job runs per organization with traffic, fanned out daily; "Run now" on
# the dashboard and `manage.py run_optimizer --org SLUG` run the same job on demand.
OPTIMIZER_RUN_INTERVAL_SECONDS: float = env.float(
    "OPTIMIZER_RUN_INTERVAL_SECONDS", default=24 * 3600.0
)
OPTIMIZER_DIGEST_INTERVAL_SECONDS: float = env.float(
    "OPTIMIZER_DIGEST_INTERVAL_SECONDS", default=7 * 24 * 3600.0
)
# Request-log rows read per keyset batch (one short indexed read each).
OPTIMIZER_BATCH_SIZE: int = env.int("OPTIMIZER_BATCH_SIZE", default=5000)
# The replay lab's judge, what its verdict may cost, and how much of each answer it reads.
OPTIMIZER_JUDGE_MODEL: str = env.str("OPTIMIZER_JUDGE_MODEL", default="gpt-4o-mini")
OPTIMIZER_JUDGE_MAX_TOKENS: int = env.int("OPTIMIZER_JUDGE_MAX_TOKENS", default=256)
OPTIMIZER_JUDGE_ANSWER_MAX_CHARS: int = env.int("OPTIMIZER_JUDGE_ANSWER_MAX_CHARS", default=6000)
# Most past requests one replay run re-sends (each is billed, plus a judge call).
OPTIMIZER_REPLAY_MAX_SAMPLE: int = env.int("OPTIMIZER_REPLAY_MAX_SAMPLE", default=50)
# The recommendations API's "status" and "kind" enums get names of their own in the schema (its
# "status" would otherwise collide with the request log's and leave both with hashed names).
_enum_overrides = SPECTACULAR_SETTINGS.get("ENUM_NAME_OVERRIDES")
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    **(_enum_overrides if isinstance(_enum_overrides, dict) else {}),
    "RequestStatusEnum": "apps.gateway.models.RequestLog.Status",
    "RecommendationStatusEnum": "apps.optimizer.models.Recommendation.Status",
    "RecommendationKindEnum": "apps.optimizer.models.Recommendation.Kind",
}
CELERY_BEAT_SCHEDULE.update(
    {
        "optimizer-run-all": {
            "task": "apps.optimizer.tasks.optimizer_run_all_task",
            "schedule": OPTIMIZER_RUN_INTERVAL_SECONDS,
        },
        "optimizer-digest-all": {
            "task": "apps.optimizer.tasks.optimizer_digest_all_task",
            "schedule": OPTIMIZER_DIGEST_INTERVAL_SECONDS,
        },
    }
)
# --- security ---------------------------------------------------------------------------------
# What is protected and how: docs/security.md.
# Social sign-in URLs of a provider without credentials answer 404, not a 500.
SOCIALACCOUNT_ADAPTER = "apps.accounts.adapters.SocialAccountAdapter"
# Content-Security-Policy (django-csp 4, llmwise.csp): every script, style, font and image from
# this server only. No inline scripts or styles and no eval (htmx is configured without it in
# templates/base.html); Pico's icons are data: images. Pages that need more set their own
# header, which the middleware leaves alone (the Redoc reference: docs_views.REFERENCE_CSP).
CONTENT_SECURITY_POLICY: dict[str, Any] = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        # 'self' covers the playground's same-origin WebSocket (ws:/wss:) too.
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
    },
}
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Secrets out of logs and error reports (llmwise/logging.py): every handler redacts API keys,
# provider and Stripe keys, webhook secrets/signatures and Authorization-style headers; error
# reports hide them by value as well as by name. Applied to every handler defined above, so a
# handler added later in this file must list "redact_secrets" itself (a test checks).
_logging: Any = LOGGING  # a plain dict literal above; typed loosely to extend it
_logging.setdefault("filters", {})["redact_secrets"] = {
    "()": "llmwise.logging.SecretRedactionFilter"
}
for _handler in _logging["handlers"].values():
    if "redact_secrets" not in _handler.setdefault("filters", []):
        _handler["filters"].append("redact_secrets")
DEFAULT_EXCEPTION_REPORTER_FILTER = "llmwise.logging.SecretRedactingExceptionReporterFilter"
# Brute force. Sign-in, sign-up and password reset: allauth's limits (per IP, and per account as
# "key" = the email tried), answered with a 429 page. Test settings switch them off; the security
# tests switch them back on.
ACCOUNT_RATE_LIMITS: dict[str, str] | bool = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",  # 5 wrong passwords for one account → 5 minutes off
    "signup": "10/m/ip,100/h/ip",
    "reset_password": "10/m/ip,3/15m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
    "confirm_email": "1/3m/key",
}
# API keys: more failed attempts than this from one IP within the window → 429 with Retry-After
# for every attempt from it until the window ends (apps.accounts.services.
# api_key_authenticate_limited). 0 switches it off.
API_KEY_AUTH_FAILURES_PER_IP: int = env.int("API_KEY_AUTH_FAILURES_PER_IP", default=20)
API_KEY_AUTH_FAILURE_WINDOW_SECONDS: int = env.int(
    "API_KEY_AUTH_FAILURE_WINDOW_SECONDS", default=60
)
# Proxies of ours in front of the app that append to X-Forwarded-For (0: use REMOTE_ADDR). Used
# for every per-IP limit, allauth's and ours.
ALLAUTH_TRUSTED_PROXY_COUNT: int = env.int("TRUSTED_PROXY_COUNT", default=0)
# The API schema documents every key-authenticated operation's error responses (400/401/404/429
# in the envelope), so clients and the fuzz tests know them (apps.accounts.schema).
_spectacular: Any = SPECTACULAR_SETTINGS
_spectacular["POSTPROCESSING_HOOKS"] = [
    *_spectacular["POSTPROCESSING_HOOKS"],
    "apps.accounts.schema.error_responses_hook",
]

# --- operations -------------------------------------------------------------------------------
# Metrics, logs, tracing and error reports: docs/operations.md.
# GET /metrics (Prometheus text format) needs "Authorization: Bearer <METRICS_TOKEN>". Without a
# token it answers 404, except from a loopback address when METRICS_ALLOW_LOOPBACK is on (the
# development default; production settings force it off: behind a local reverse proxy every
# request would come from loopback).
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
METRICS_ALLOW_LOOPBACK: bool = env.bool("METRICS_ALLOW_LOOPBACK", default=False)
# Error reports to Sentry, only when a DSN is set (llmwise.observability scrubs every event).
SENTRY_DSN: str = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT: str = env.str("SENTRY_ENVIRONMENT", default="")
SENTRY_RELEASE: str = env.str("SENTRY_RELEASE", default="")
# OpenTelemetry tracing (OTLP over HTTP), only when an OTLP endpoint is set; the SDK reads its
# other OTEL_* variables (headers, sampler, service name) itself.
OTEL_TRACING: bool = bool(
    env.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default="")
    or env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
)
