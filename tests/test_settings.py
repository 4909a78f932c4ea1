"""Settings come from the environment; production refuses to start without its secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_settings(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "SECRET_KEY",
            "DATABASE_URL",
            "REDIS_URL",
            "ALLOWED_HOSTS",
            "FIELD_ENCRYPTION_KEYS",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    clean.update(env, DJANGO_SETTINGS_MODULE=module)
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE'], settings.CACHES['default']['BACKEND'], "
        "settings.CHANNEL_LAYERS['default']['BACKEND'], settings.CELERY_BROKER_URL, "
        "settings.CELERY_TASK_ALWAYS_EAGER)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PROD_ENV = {
    "SECRET_KEY": "s" * 50,
    "DATABASE_URL": "postgres://u@127.0.0.1:5432/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "llmwise.example",
    "FIELD_ENCRYPTION_KEYS": "k" * 64,
}


@pytest.mark.parametrize(
    "missing", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "FIELD_ENCRYPTION_KEYS"]
)
def test_production_refuses_to_start_without_a_secret(missing: str) -> None:
    env = {k: v for k, v in PROD_ENV.items() if k != missing}
    result = _load_settings("llmwise.settings.prod", env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr


def test_production_with_everything_set_uses_postgres_and_redis() -> None:
    result = _load_settings("llmwise.settings.prod", PROD_ENV)
    assert result.returncode == 0, result.stderr
    engine, cache, layer, broker, eager = result.stdout.split()
    assert engine == "django.db.backends.postgresql"
    assert cache.endswith("RedisCache")
    assert layer.endswith("RedisChannelLayer")
    assert broker == "redis://127.0.0.1:6379/0"
    assert eager == "False"


def test_embedded_default_needs_nothing(tmp_path: Path) -> None:
    result = _load_settings("llmwise.settings.dev", {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert result.returncode == 0, result.stderr
    engine, cache, layer, broker, eager = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert cache.endswith("LocMemCache")
    assert layer.endswith("InMemoryChannelLayer")
    assert broker == "memory://"
    assert eager == "True"


def test_production_passes_deploy_checks() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        PROD_ENV,
        DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
        SECRET_KEY="k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789" * 2,
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_the_stripe_sandbox() -> None:
    result = _load_settings("llmwise.settings.prod", {**PROD_ENV, "STRIPE_SANDBOX": "true"})
    assert result.returncode != 0
    assert "STRIPE_SANDBOX" in result.stderr
