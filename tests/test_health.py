from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def test_healthz() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["x-request-id"].startswith("req_")


def test_readyz_reports_database_and_redis(settings) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    expected = "ok" if settings.REDIS_URL else "not configured (embedded)"
    assert checks["redis"] == expected


def test_readyz_fails_when_redis_is_unreachable() -> None:
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    # Django rebuilds its cache handlers when CACHES changes.
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0", CACHES=unreachable):
        response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "error"


def test_readyz_fails_when_database_is_unreachable(monkeypatch) -> None:
    # Point the connection at a port where no database listens; nothing of ours is patched.
    params = dict(connection.settings_dict)
    if params["ENGINE"].endswith("sqlite3"):
        pytest.skip("an SQLite file is always reachable")
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    connection.close()
    try:
        response = Client().get("/readyz")
    finally:
        monkeypatch.undo()
        connection.close()
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error"
