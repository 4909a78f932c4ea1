"""The image's web role with two uvicorn worker processes: /metrics adds up what both counted.

Runs ``docker/entrypoint.sh web`` as the image does (production settings, the throwaway values
the Dockerfile gives collectstatic), with a metrics token and a metrics directory of our own.
No database or Redis is needed for what is checked here: the HTTP counter of /healthz.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import Metrics
from tests.test_docker import ENTRYPOINT, collectstatic_env, free_port, listening, run_env

pytestmark = pytest.mark.slow

HOST = "localhost"  # the first of the throwaway ALLOWED_HOSTS
PROXY_HEADERS = {"Host": HOST, "X-Forwarded-Proto": "https"}  # as the reverse proxy sends them
MAX_REQUESTS = 400


def test_two_worker_processes_report_as_one(tmp_path: Path) -> None:
    token = "mt-" + secrets.token_urlsafe(24)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over from the previous start")
    (tmp_path / "static").mkdir()
    port = free_port()
    env = run_env(
        **{
            **collectstatic_env(),
            "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: this test needs no Redis
        },
        DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        STATIC_ROOT=str(tmp_path / "static"),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        METRICS_TOKEN=token,
    )
    for name in ("LOG_FORMAT", "SENTRY_DSN", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    log = tmp_path / "web.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["bash", str(ENTRYPOINT), "web"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert not stale.exists(), "the entry point must start with an empty metrics directory"

        # A new connection per request, until both workers have served some.
        sent = 0
        while len(list(metrics_dir.glob("counter_*.db"))) < 2:
            assert sent < MAX_REQUESTS, "one worker served every request"
            response = httpx.get(f"{base}/healthz", headers=PROXY_HEADERS, timeout=5)
            assert response.status_code == 200, response.text
            sent += 1
        for _ in range(10):
            assert httpx.get(f"{base}/healthz", headers=PROXY_HEADERS, timeout=5).is_success
            sent += 1

        assert httpx.get(f"{base}/metrics", headers=PROXY_HEADERS, timeout=5).status_code == 401
        scraped = httpx.get(
            f"{base}/metrics",
            headers={**PROXY_HEADERS, "Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert scraped.status_code == 200, scraped.text
        metrics = Metrics(scraped.text)
        healthz = {"view": "healthz", "method": "GET", "status": "200"}
        assert metrics.value("llmwise_http_responses_total", **healthz) == sent
        assert metrics.value("llmwise_http_responses_total", view="metrics", status="401") == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)

    # Production writes JSON lines, uvicorn's own lines from the workers included.
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    started = [e for e in entries if e["message"].startswith("Started server process")]
    assert len(started) == 2, log.read_text()
    assert all(e["logger"] == "uvicorn.error" and e["request_id"] is None for e in started)
