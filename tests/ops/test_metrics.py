"""GET /metrics: who may read it, and what real traffic makes it say.

Gateway calls go over real HTTP to the app served by uvicorn (``live_gateway``), which calls the
sandbox upstreams over real HTTP; /metrics is read the way Prometheus reads it, over HTTP with the
bearer token. Each test compares two scrapes, so it counts only what it caused itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation
from llmwise.celery import app as celery_app
from llmwise.embedded import EmbeddedScheduler
from llmwise.settings import base as base_settings
from tests.conftest import Personas
from tests.factories import PASSWORD, UserFactory
from tests.gateway.conftest import LiveGateway
from tests.ops.conftest import Metrics, scrape

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"
PROVIDER = "openai"
ENDPOINT = "openai.chat"  # the request log's name for /v1/chat/completions
VIEW = "openai_chat_completions"
FUNDS = 1_000_000
FAILING_TASK = "tests.ops.always_fails"


@celery_app.task(name=FAILING_TASK, ignore_result=True)
def always_fails() -> None:
    raise RuntimeError("this task always fails")


@pytest.fixture
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url


def _key(personas: Personas, **kwargs: Any) -> str:
    return account_services.api_key_create(
        org=personas.org, name="ops", created_by=personas.owner, **kwargs
    ).secret


def _fund(personas: Personas) -> None:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="ops tests")


def _chat(
    gateway: LiveGateway, secret: str, content: str = "What is the capital of France?", **extra: Any
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 30,
            **extra,
        },
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def _wait_for_logs(count: int, timeout: float = 10) -> None:
    """Streams are settled and logged just after their last byte: wait for the rows."""
    deadline = time.monotonic() + timeout
    while RequestLog.objects.count() < count:
        assert time.monotonic() < deadline, "the request log rows did not appear"
        time.sleep(0.02)


def _client_scrape(token: str) -> Metrics:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return Metrics(response.content.decode())


# --- who may read it -------------------------------------------------------------------------
@pytest.mark.django_db
def test_metrics_need_the_right_bearer_token(metrics_token: str) -> None:
    client = Client()
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert b"llmwise_" not in missing.content
    for header in ("Bearer wrong-token", f"Basic {metrics_token}", f"Bearer {metrics_token}x"):
        refused = client.get("/metrics", HTTP_AUTHORIZATION=header)
        assert refused.status_code == 401, header
        assert b"llmwise_" not in refused.content

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    metrics = Metrics(response.content.decode())
    assert metrics.has("llmwise_reservations_open")
    assert metrics.value("llmwise_metrics_source_up", source="database") == 1
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}").status_code == 405


@pytest.mark.django_db
def test_without_a_token_metrics_are_hidden_unless_loopback_is_allowed(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_LOOPBACK = False
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404

    settings.METRICS_ALLOW_LOOPBACK = True
    for address in ("127.0.0.1", "::1"):
        assert Client().get("/metrics", REMOTE_ADDR=address).status_code == 200, address
    assert Client().get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 404
    # A reverse proxy on the same machine connects from loopback on behalf of anyone.
    proxied = Client().get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert proxied.status_code == 404


def test_production_settings_never_open_metrics_without_a_token() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "METRICS_"))},
        "DJANGO_SETTINGS_MODULE": "llmwise.settings.prod",
        "SECRET_KEY": "prod-settings-probe",
        "DATABASE_URL": "sqlite://:memory:",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "ALLOWED_HOSTS": "localhost",
        "FIELD_ENCRYPTION_KEYS": "prod-settings-probe-" + "k" * 32,
        "METRICS_ALLOW_LOOPBACK": "true",
    }
    probe = (
        "import json; from django.conf import settings as s; "
        "print(json.dumps([s.METRICS_ALLOW_LOOPBACK, s.METRICS_TOKEN, "
        "s.LOGGING['handlers']['console']['formatter']]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, "", "json"]


# --- what traffic makes it say ----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog", "_providers_on_sandbox", "clean_health")
def test_gateway_calls_are_counted_with_model_and_provider(
    live_gateway: LiveGateway, personas: Personas, metrics_token: str
) -> None:
    _fund(personas)
    secret = _key(personas)
    before = scrape(live_gateway.url, metrics_token)

    assert _chat(live_gateway, secret).status_code == 200
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200
        assert "[DONE]" in streamed.read().decode()
    _wait_for_logs(2)
    after = scrape(live_gateway.url, metrics_token)

    def grew(name: str, **labels: str) -> float:
        return after.grown(before, name, **labels)

    target = {"endpoint": ENDPOINT, "model": MODEL, "provider": PROVIDER}
    assert grew("llmwise_gateway_requests_total", **target, status="ok") == 2
    assert grew("llmwise_gateway_errors_total", **target) == 0
    assert grew("llmwise_gateway_overhead_seconds_count", endpoint=ENDPOINT) == 2
    assert grew("llmwise_gateway_overhead_seconds_sum", endpoint=ENDPOINT) >= 0
    upstream = {"provider": PROVIDER}
    assert grew("llmwise_upstream_latency_seconds_count", **upstream, stream="false") == 1
    assert grew("llmwise_upstream_latency_seconds_count", **upstream, stream="true") == 1
    assert grew("llmwise_upstream_latency_seconds_sum", **upstream) > 0
    assert grew("llmwise_time_to_first_token_seconds_count", **upstream) == 1
    assert grew("llmwise_http_responses_total", view=VIEW, method="POST", status="200") == 2
    # The scrapes themselves are counted too, under their own view.
    assert grew("llmwise_http_responses_total", view="metrics", status="200") >= 1

    # Histograms agree with what the request log recorded.
    rows = list(RequestLog.objects.order_by("id"))
    plain, stream = rows
    assert stream.ttft_ms is not None
    ttft_sum = grew("llmwise_time_to_first_token_seconds_sum", **upstream)
    assert ttft_sum == pytest.approx(stream.ttft_ms / 1000)
    overhead = grew("llmwise_gateway_overhead_seconds_sum", endpoint=ENDPOINT)
    expected = (plain.latency_ms - plain.upstream_ms) + (stream.ttft_ms - stream.upstream_ms)
    assert overhead == pytest.approx(expected / 1000)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog", "_providers_on_sandbox", "clean_health")
def test_an_upstream_failure_counts_as_an_error(
    live_gateway: LiveGateway, personas: Personas, metrics_token: str
) -> None:
    _fund(personas)
    secret = _key(personas)
    before = scrape(live_gateway.url, metrics_token)

    failed = _chat(live_gateway, secret, "[[sandbox:http_500]] hello")
    assert failed.status_code >= 500
    row = RequestLog.objects.get(request_id=failed.headers["x-request-id"])
    assert row.error_type
    after = scrape(live_gateway.url, metrics_token)

    target = {"endpoint": ENDPOINT, "model": MODEL, "provider": PROVIDER}
    errors = "llmwise_gateway_errors_total"
    assert after.grown(before, errors, **target, error_type=row.error_type) == 1
    requests = "llmwise_gateway_requests_total"
    assert after.grown(before, requests, **target, status="error") == 1
    assert after.grown(before, requests, **target, status="ok") == 0
    status = str(failed.status_code)
    assert after.grown(before, "llmwise_http_responses_total", view=VIEW, status=status) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog", "_providers_on_sandbox", "clean_health")
def test_rate_limit_refusals_are_counted(
    live_gateway: LiveGateway, personas: Personas, metrics_token: str, settings: Any
) -> None:
    _fund(personas)
    secret = _key(personas, rpm_limit=1)
    before = scrape(live_gateway.url, metrics_token)

    assert _chat(live_gateway, secret).status_code == 200
    refused = _chat(live_gateway, secret)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_rpm"

    settings.API_KEY_AUTH_FAILURES_PER_IP = 2
    guesses = [_chat(live_gateway, "lw-" + "x" * 40).status_code for _ in range(3)]
    assert guesses == [401, 401, 429]
    after = scrape(live_gateway.url, metrics_token)

    rejections = "llmwise_rate_limit_rejections_total"
    for limit in ("rate_limit_rpm", "too_many_failed_authentications"):
        assert after.grown(before, rejections, limit=limit) == 1, limit
    assert after.grown(before, "llmwise_http_responses_total", view=VIEW, status="429") == 2
    # A refused call never reached the request log, so it is no gateway request.
    assert after.grown(before, "llmwise_gateway_requests_total", endpoint=ENDPOINT) == 1


# --- state read at scrape time ----------------------------------------------------------------
@pytest.mark.django_db
def test_open_and_overdue_reservations_are_counted(personas: Personas, metrics_token: str) -> None:
    _fund(personas)
    wallet = wallet_services.wallet_for_org(org=personas.org)
    assert _client_scrape(metrics_token).value("llmwise_reservations_open") == 0
    held = wallet_services.wallet_reserve(
        wallet=wallet, amount_micros=1000, request_id="req_ops_open", expires_in=timedelta(hours=1)
    )
    wallet_services.wallet_reserve(
        wallet=wallet,
        amount_micros=1000,
        request_id="req_ops_overdue",
        expires_in=timedelta(milliseconds=1),
    )
    time.sleep(0.01)
    metrics = _client_scrape(metrics_token)
    assert metrics.value("llmwise_reservations_open") == 2
    assert metrics.value("llmwise_reservations_overdue") == 1

    wallet_services.reservation_settle(reservation=held, actual_micros=500)
    wallet_services.reservations_release_expired()
    metrics = _client_scrape(metrics_token)
    assert metrics.value("llmwise_reservations_open") == 0
    assert metrics.value("llmwise_reservations_overdue") == 0


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog", "_providers_on_sandbox", "clean_health")
def test_breaker_states_follow_the_providers_health(
    personas: Personas, metrics_token: str, settings: Any
) -> None:
    settings.GATEWAY_MESH_BREAKER_MIN_CALLS = 2
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = 30
    _fund(personas)
    secret = _key(personas)
    target = {"provider": PROVIDER, "model": MODEL}
    metrics = _client_scrape(metrics_token)
    assert metrics.value("llmwise_circuit_breaker_state", **target, state="closed") == 1
    assert metrics.value("llmwise_circuit_breaker_state", **target, state="open") == 0

    for _ in range(2):
        failed = Client().post(
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "[[sandbox:http_500]] x"}]},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert failed.status_code >= 500
    metrics = _client_scrape(metrics_token)
    assert metrics.value("llmwise_circuit_breaker_state", **target, state="open") == 1
    assert metrics.value("llmwise_circuit_breaker_state", **target, state="closed") == 0
    assert metrics.value("llmwise_metrics_source_up", source="counters") == 1
    # Another provider's model is untouched.
    other = {"provider": "anthropic", "state": "closed"}
    assert metrics.value("llmwise_circuit_breaker_state", **other) >= 1
    assert metrics.value("llmwise_circuit_breaker_state", provider="anthropic", state="open") == 0


@pytest.mark.django_db
def test_failed_celery_tasks_are_counted(metrics_token: str) -> None:
    before = _client_scrape(metrics_token)
    name = "llmwise_celery_task_failures_total"
    assert before.has(name, task="llmwise.heartbeat")
    # As a worker runs it: Celery's own trace, which sends task_failure.
    result = always_fails.apply(throw=False)
    assert result.failed()
    # As the embedded default's scheduler runs it (eager: the error is raised, not signalled).
    scheduler = EmbeddedScheduler({"fails": {"task": FAILING_TASK, "schedule": 3600.0}})
    scheduler.start()
    deadline = time.monotonic() + 10
    while _client_scrape(metrics_token).value(name, task=FAILING_TASK) < 2:
        assert time.monotonic() < deadline, "the embedded run's failure was not counted"
        time.sleep(0.05)
    scheduler.stop()
    assert _client_scrape(metrics_token).value(name, task=FAILING_TASK) == 2
    assert _client_scrape(metrics_token).value(name, task="llmwise.heartbeat") == 0


@pytest.mark.django_db
def test_queue_length_comes_from_the_redis_broker(metrics_token: str, settings: Any) -> None:
    settings.CELERY_BROKER_URL = "memory://"  # the embedded default: no queue to measure
    assert not _client_scrape(metrics_token).has("llmwise_celery_queue_length")
    if not django_settings.REDIS_URL:
        pytest.skip("needs Redis (REDIS_URL) for a real broker")
    from kombu import Connection

    url = settings.CACHES["default"]["LOCATION"]  # this xdist worker's own Redis database
    settings.CELERY_BROKER_URL = url
    assert _client_scrape(metrics_token).value("llmwise_celery_queue_length", queue="celery") == 0
    with Connection(url) as connection:
        queue = connection.SimpleQueue("celery")
        for number in range(3):
            queue.put({"n": number})
        queue.close()
    metrics = _client_scrape(metrics_token)
    assert metrics.value("llmwise_celery_queue_length", queue="celery") == 3
    assert metrics.value("llmwise_metrics_source_up", source="broker") == 1

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    down = _client_scrape(metrics_token)
    assert down.value("llmwise_metrics_source_up", source="broker") == 0
    assert not down.has("llmwise_celery_queue_length")


@pytest.mark.django_db(transaction=True)  # the settle's own transaction is the outermost
def test_failed_settlements_are_counted(personas: Personas, metrics_token: str) -> None:
    """A hold that cannot be settled or released (here: its row is gone) raises as before, and
    the failure is counted once per call."""
    wallet = wallet_services.wallet_for_org(org=personas.org)
    missing = Reservation(pk=2_000_000_000, wallet=wallet, request_id="req_ops_missing")
    before = _client_scrape(metrics_token)
    with pytest.raises(Reservation.DoesNotExist):
        wallet_services.reservation_settle(reservation=missing, actual_micros=10)
    with pytest.raises(Reservation.DoesNotExist):
        wallet_services.reservation_release(reservation=missing)
    after = _client_scrape(metrics_token)
    failures = "llmwise_settle_failures_total"
    assert after.grown(before, failures, operation="settle") == 1
    assert after.grown(before, failures, operation="release") == 1


@pytest.mark.django_db
def test_a_locked_sign_in_counts_as_a_rejection(metrics_token: str, settings: Any) -> None:
    """allauth locks an account after five wrong passwords (test settings switch its limits off;
    here they are production's)."""
    settings.ACCOUNT_RATE_LIMITS = dict(base_settings.ACCOUNT_RATE_LIMITS)
    UserFactory(email="locked@example.com")
    before = _client_scrape(metrics_token)
    for attempt in range(5):
        Client().post(
            reverse("account_login"),
            {"login": "locked@example.com", "password": "wrong"},
            REMOTE_ADDR=f"10.0.3.{attempt}",
        )
    locked = Client().post(
        reverse("account_login"),
        {"login": "locked@example.com", "password": PASSWORD},
        REMOTE_ADDR="10.0.3.99",
    )
    assert locked.status_code == 429
    after = _client_scrape(metrics_token)
    rejections = "llmwise_rate_limit_rejections_total"
    assert after.grown(before, rejections, limit="login_failed") == 1
    assert after.grown(before, "llmwise_http_responses_total", status="429") == 1
