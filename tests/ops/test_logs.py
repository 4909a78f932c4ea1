"""Structured logs: one JSON object per line, each line of a request carrying its request id.

The live test serves the whole app with uvicorn (async views on the event loop, ORM calls in
worker threads) and reads what a JSON handler configured like ours wrote.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apps.accounts import services as account_services
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from llmwise.celery import app as celery_app
from llmwise.logging import (
    JsonFormatter,
    SecretRedactionFilter,
    TextFormatter,
    log_context,
    log_context_bind,
)
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

LOGGED_TASK = "tests.ops.logs_a_line"
task_logger = logging.getLogger("tests.ops.task")


@celery_app.task(name=LOGGED_TASK, ignore_result=True)
def logs_a_line() -> None:
    task_logger.warning("inside the task")


class _Lines:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


@pytest.fixture
def json_lines() -> Iterator[_Lines]:
    """A handler as LOG_FORMAT=json configures one (JSON formatter, redaction filter) on the
    root logger, which every logger of the app propagates to."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretRedactionFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    # django.request does not propagate (its own console handler): listen there too.
    django_request = logging.getLogger("django.request")
    django_request.addHandler(handler)
    try:
        yield _Lines(stream)
    finally:
        root.removeHandler(handler)
        django_request.removeHandler(handler)


@pytest.fixture
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog", "_providers_on_sandbox")
def test_every_line_of_a_request_carries_its_request_id(
    live_gateway: LiveGateway, personas: Personas, json_lines: _Lines, sandbox: SandboxServer
) -> None:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="logs")
    secret = account_services.api_key_create(
        org=personas.org, name="logs", created_by=personas.owner
    ).secret
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    url = f"{live_gateway.url}/v1/chat/completions"

    answered = httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})
    refused = httpx.post(url, json=body, headers={"Authorization": "Bearer lw-" + "n" * 40})
    assert (answered.status_code, refused.status_code) == (200, 401)
    answered_id, refused_id = answered.headers["x-request-id"], refused.headers["x-request-id"]

    lines = json_lines.all()
    assert lines, "nothing was logged"
    for line in lines:
        assert {"ts", "level", "logger", "message", "request_id", "org_id"} <= set(line)
    # The upstream call of the answered request, made on the event loop after the key was
    # checked in a worker thread: the request id and the key's organization are both there.
    upstream = [
        line
        for line in lines
        if line["logger"] == "apps.gateway.providers"
        and f"POST {sandbox.base_url}/openai/" in line["message"]
    ]
    assert len(upstream) == 1, lines
    assert all(line["request_id"] == answered_id for line in upstream)
    assert all(line["org_id"] == personas.org.pk for line in upstream)
    # Django's warning about the refused one carries that request's id, and no organization.
    unauthorized = [line for line in lines if line["message"].startswith("Unauthorized:")]
    assert [line["request_id"] for line in unauthorized] == [refused_id]
    assert unauthorized[0]["org_id"] is None
    assert unauthorized[0]["status_code"] == 401
    # Lines with a request id name one of the two; lines without are this test's own client.
    served = [line for line in lines if line["request_id"] is not None]
    assert {line["request_id"] for line in served} == {answered_id, refused_id}
    for line in lines:
        if line["request_id"] is None:
            assert line["logger"] == "httpx", line
            assert f"POST {live_gateway.url}/" in line["message"], line
    assert secret not in json_lines.stream.getvalue()


def test_concurrent_requests_keep_their_own_ids(json_lines: _Lines) -> None:
    """Two requests interleaved on one event loop: each line names its own request."""
    logger = logging.getLogger("tests.ops.concurrency")

    async def request(request_id: str) -> None:
        log_context_bind(reset=True, request_id=request_id)
        for step in range(3):
            logger.warning("step %s", step)
            await asyncio.sleep(0.001)
            await asyncio.to_thread(logger.warning, "in a thread %s", step)

    async def both() -> None:
        await asyncio.gather(request("req_a"), request("req_b"))

    asyncio.run(both())
    lines = [line for line in json_lines.all() if line["logger"] == "tests.ops.concurrency"]
    assert len(lines) == 12
    by_id: dict[str, int] = {}
    for line in lines:
        by_id[line["request_id"]] = by_id.get(line["request_id"], 0) + 1
    assert by_id == {"req_a": 6, "req_b": 6}
    assert log_context().get("request_id") is None  # nothing leaked into this context


def test_a_task_run_inline_adds_its_id_and_gives_it_back(json_lines: _Lines) -> None:
    log_context_bind(reset=True, request_id="req_outer")
    try:
        logs_a_line.apply()
        logging.getLogger("tests.ops.task").warning("after the task")
    finally:
        log_context_bind(reset=True)
    inside, after = [line for line in json_lines.all() if line["logger"] == "tests.ops.task"]
    assert inside["message"] == "inside the task"
    assert inside["task"] == LOGGED_TASK
    assert inside["task_id"]
    assert inside["request_id"] == "req_outer"
    assert after["request_id"] == "req_outer"
    assert "task_id" not in after


def test_json_lines_carry_exceptions_and_extras_without_secrets(json_lines: _Lines) -> None:
    secret_key = "sk-proj-" + "Q" * 30
    logger = logging.getLogger("tests.ops.json")
    log_context_bind(reset=True, request_id="req_json", org_id=42)
    try:
        try:
            raise ValueError(f"upstream refused {secret_key}")
        except ValueError:
            logger.exception(
                "call failed", extra={"attempt": 2, "headers": {"authorization": secret_key}}
            )
    finally:
        log_context_bind(reset=True)
    (line,) = [line for line in json_lines.all() if line["logger"] == "tests.ops.json"]
    assert line["level"] == "ERROR"
    assert line["message"] == "call failed"
    assert (line["request_id"], line["org_id"], line["attempt"]) == ("req_json", 42, 2)
    assert "ValueError: upstream refused" in line["exception"]
    assert line["ts"].endswith("+00:00")
    assert secret_key not in json_lines.stream.getvalue()
    assert "[REDACTED]" in line["exception"]
    assert "[REDACTED]" in line["headers"]


def test_text_lines_show_the_request_id() -> None:
    formatter = TextFormatter(fmt="%(levelname)s %(name)s %(context)s%(message)s")
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    assert formatter.format(record) == "INFO app hello there"
    log_context_bind(reset=True, request_id="req_text")
    try:
        assert formatter.format(record) == "INFO app [req_text] hello there"
    finally:
        log_context_bind(reset=True)
    try:
        raise KeyError("gone")
    except KeyError:
        failed = logging.LogRecord("app", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    assert "KeyError: 'gone'" in formatter.format(failed)


@pytest.mark.slow
@pytest.mark.parametrize("access_log", [True, False])
def test_uvicorn_access_lines_are_json_unless_switched_off(access_log: bool, tmp_path: Any) -> None:
    """LOG_FORMAT=json takes over uvicorn's loggers, but ``--no-access-log`` stays off (a line
    per request costs the hot path and was not asked for)."""
    import os
    import socket
    import subprocess
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmwise.settings.dev",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": "",
        "LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "uvicorn", "llmwise.asgi:application", "--port", str(port)]
    command += ["--lifespan", "off"] + ([] if access_log else ["--no-access-log"])
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert [line["logger"] for line in lines if line["logger"] == "uvicorn.error"], output
    if access_log:
        assert any("GET /healthz" in line["message"] for line in access), output
    else:
        assert access == [], output
