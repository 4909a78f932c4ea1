"""Secrets never appear in logs, error pages, error reports, emails or any table.

One realistic run — sign up, create an API key, call the API (a success, a wrong key, an upstream
failure), set a BYOK key that the provider then refuses (on a call and on "verify"), buy credit
through a Stripe webhook with its signature, hit a failing view — while every logger of the
process logs at DEBUG. The secrets it used are then searched for in: what our configured handlers
wrote, every raw log record (before redaction: our code must not log them in the first place),
every row of every table, every email sent, the 500 page and a Django error report.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.apps import apps
from django.core import mail
from django.test import Client, RequestFactory, override_settings
from django.views.debug import ExceptionReporter

from apps.gateway.sandbox import SandboxServer
from apps.gateway.services import catalog_seed
from apps.wallet.models import CreditPurchase
from apps.wallet.stripe_sandbox import sign
from llmwise.logging import REDACTED, JsonFormatter, SecretRedactionFilter, redact
from tests.factories import PASSWORD
from tests.gateway.conftest import FaultControl
from tests.wallet.stripe_server import SECRET_KEY as STRIPE_SECRET_KEY
from tests.wallet.stripe_server import WEBHOOK_SECRET, StripeServer

BYOK_SECRET = "sk-proj-byokSecretForTheRedactionTest0123456789"
GUESSED_KEY = "lw-guessedButWrongKeyForTheRedactionTest0123456"
EMAIL = "redaction@example.com"


# --- capturing everything -----------------------------------------------------------------------
class _RawHandler(logging.Handler):
    """Every record as text, *before* any other handler (and its redaction filter) saw it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.name, record.levelname, record.getMessage()]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        parts.append(json.dumps({k: v for k, v in vars(record).items() if isinstance(v, str)}))
        self.lines.append(" ".join(parts))


@dataclass
class Captured:
    raw: _RawHandler
    output: io.StringIO
    json_output: io.StringIO = field(default_factory=io.StringIO)
    records_seen: int = 0
    configured_handlers: list[logging.Handler] = field(default_factory=list)


@contextmanager
def every_log_at_debug() -> Iterator[Captured]:
    """All loggers at DEBUG; our configured handlers write into a buffer, and a twin of each with
    the JSON formatter (LOG_FORMAT=json, production's default) into another; a raw handler first
    in line on every logger that has handlers."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    levels = {logger: logger.level for logger in loggers}
    raw = _RawHandler()
    output = io.StringIO()
    streams: dict[logging.StreamHandler[Any], Any] = {}
    captured = Captured(raw=raw, output=output)
    twins: dict[logging.Handler, logging.Handler] = {}
    added: list[tuple[logging.Logger, logging.Handler]] = []
    for logger in loggers:
        if logger.level != logging.NOTSET or logger is logging.getLogger():
            logger.setLevel(logging.DEBUG)
        if logger.handlers or logger is logging.getLogger():
            logger.handlers.insert(0, raw)
        for handler in logger.handlers:
            ours = any(isinstance(f, SecretRedactionFilter) for f in handler.filters)
            if ours and isinstance(handler, logging.StreamHandler) and handler not in streams:
                streams[handler] = handler.setStream(output)
                captured.configured_handlers.append(handler)
                twin = logging.StreamHandler(captured.json_output)
                twin.setFormatter(JsonFormatter())
                for kept in handler.filters:
                    twin.addFilter(kept)
                twins[handler] = twin
            if handler in twins:
                added.append((logger, twins[handler]))
    for owner, twin in added:  # once every logger was seen: a twin is never taken for ours
        owner.addHandler(twin)
    try:
        yield captured
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
            if raw in logger.handlers:
                logger.handlers.remove(raw)
        for owner, twin in added:
            if twin in owner.handlers:
                owner.removeHandler(twin)
        for handler, stream in streams.items():
            handler.setStream(stream)


def _every_row() -> str:
    """Every row of every table, as text."""
    chunks = []
    for model in apps.get_models():
        for row in model._default_manager.all().values():
            chunks.append(f"{model._meta.label} {row!r}")
    return "\n".join(chunks)


def _find(secrets: dict[str, str], text: str, where: str) -> None:
    found = [name for name, value in secrets.items() if value and value in text]
    assert not found, f"{where} contains secrets: {found}"


# --- the run ------------------------------------------------------------------------------------
def _signup(client: Client) -> None:
    response = client.post(
        "/accounts/signup/", {"email": EMAIL, "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 302, response.content.decode()[:500]
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mail.outbox[-1].body)
    assert link is not None
    path = "/" + link.group(0).split("/", 3)[3]
    assert client.post(path).status_code == 302
    assert client.get("/dashboard/").status_code == 200


def _create_key(client: Client) -> str:
    response = client.post("/dashboard/keys/", {"name": "ci"})
    assert response.status_code == 200
    found = re.search(r'value="(lw-[^"]+)"', response.content.decode())
    assert found is not None
    return found.group(1)


def _buy_credit(client: Client, stripe: StripeServer) -> str:
    """Checkout through the fake Stripe; the webhook is posted by us so we know its signature."""
    stripe.control("POST", "config", json={"auto_deliver": False})
    response = client.post("/dashboard/billing/", {"amount": "25", "currency": "usd"})
    assert response.status_code == 302, response.content.decode()[:500]
    checkout = httpx.get(response["Location"], timeout=30)
    action = re.search(r'<form method="post" action="([^"]+)"', checkout.text)
    assert action is not None
    parts = urlsplit(response["Location"])
    paid = httpx.post(
        f"{parts.scheme}://{parts.netloc}{action.group(1)}",
        data={"card_outcome": "success", "email": EMAIL},
        timeout=30,
    )
    assert paid.status_code == 303
    event = next(
        e for e in stripe.sandbox.events.values() if e["type"] == "checkout.session.completed"
    )
    payload = json.dumps(event, indent=2)
    signature = sign(payload, WEBHOOK_SECRET)
    delivered = Client().post(
        "/webhooks/stripe/",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )
    assert delivered.status_code == 200
    assert CreditPurchase.objects.get().status == CreditPurchase.Status.PAID
    return signature


def _chat(secret: str, content: str, model: str = "gpt-4o-mini") -> Any:
    return Client().post(
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 20},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


@pytest.mark.django_db(transaction=True)
@override_settings(ROOT_URLCONF="tests.security.crash_urls")
def test_a_realistic_run_leaves_no_secret_anywhere(
    stripe_env: StripeServer, sandbox: SandboxServer, faults: FaultControl, settings: Any
) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    catalog_seed()
    client = Client()
    secrets: dict[str, str] = {
        "password": PASSWORD,
        "byok key": BYOK_SECRET,
        "guessed key": GUESSED_KEY,
        "stripe secret key": STRIPE_SECRET_KEY,
        "stripe webhook secret": WEBHOOK_SECRET,
    }
    with every_log_at_debug() as logs:
        _signup(client)
        secrets["api key"] = api_secret = _create_key(client)
        signature = _buy_credit(client, stripe_env)
        secrets["webhook signature"] = signature.split("v1=", 1)[1]

        assert _chat(api_secret, "What is the capital of France?").status_code == 200
        assert _chat(GUESSED_KEY, "hello").status_code == 401
        assert _chat(api_secret, "[[sandbox:http_500]] hello").status_code >= 500

        response = client.post(
            "/dashboard/settings/providers/", {"provider": "openai", "secret": BYOK_SECRET}
        )
        assert response.status_code == 302, response.content.decode()[:500]
        refused = _chat(api_secret, "[[sandbox:http_401]] hello")
        assert refused.status_code >= 400
        faults.set(provider="openai", fault="http_401")
        key_id = re.search(
            r"/settings/providers/(\d+)/verify/",
            client.get("/dashboard/settings/providers/").content.decode(),
        )
        assert key_id is not None
        assert (
            client.post(f"/dashboard/settings/providers/{key_id.group(1)}/verify/").status_code
            == 302
        )
        faults.clear()

        crash = Client(raise_request_exception=False).post(
            "/_test/crash",
            {"secret": BYOK_SECRET},
            HTTP_AUTHORIZATION=f"Bearer {api_secret}",
            HTTP_STRIPE_SIGNATURE=signature,
        )
        assert crash.status_code == 500

    # Every response the run saw is also searched: no page echoes a secret back.
    _find({k: v for k, v in secrets.items() if k != "api key"}, crash.content.decode(), "500 page")
    _find(secrets, crash.content.decode(), "the 500 page")

    output = logs.output.getvalue()
    assert logs.configured_handlers, "no configured log handler found to capture"
    assert len(logs.raw.lines) > 50, "the run logged suspiciously little: is capture working?"
    assert "simulated failure" in output  # the crash was logged, with its traceback
    raw = "\n".join(logs.raw.lines)
    assert "Unauthorized: /v1/chat/completions" in raw  # the wrong key's 401 was logged
    assert "openai: POST " in raw  # the upstream calls' lines too
    _find(secrets, output, "the log output")
    json_output = logs.json_output.getvalue()
    entries = [json.loads(line) for line in json_output.splitlines()]
    assert len(entries) > 50, "the JSON handlers wrote suspiciously little"
    assert any(entry["request_id"] for entry in entries)  # lines of requests name them
    assert "simulated failure" in json_output
    _find(secrets, json_output, "the JSON log output")
    _find(secrets, raw, "a raw log record")
    _find(secrets, _every_row(), "a database row")
    _find(secrets, "\n".join(f"{m.subject}\n{m.body}" for m in mail.outbox), "an email")


def test_error_reports_hide_secrets_in_variables_headers_and_post(
    rf: RequestFactory,
) -> None:
    api_secret = "lw-" + "A" * 43
    request = rf.post(
        "/v1/chat/completions",
        {"secret": BYOK_SECRET, "note": f"my key is {api_secret}"},
        HTTP_AUTHORIZATION=f"Bearer {api_secret}",
        HTTP_X_API_KEY=api_secret,
        HTTP_STRIPE_SIGNATURE="t=1,v1=" + "ab" * 32,
    )

    def failing(headers: dict[str, str], body: str, upstream: str) -> None:
        raise ValueError("upstream refused the request")

    try:
        failing({"Authorization": f"Bearer {api_secret}"}, f'{{"key": "{BYOK_SECRET}"}}', "x")
    except ValueError:
        reporter = ExceptionReporter(request, *sys.exc_info())
        html = reporter.get_traceback_html()
        text = reporter.get_traceback_text()
    for report in (html, text):
        assert api_secret not in report
        assert BYOK_SECRET not in report
        assert "ab" * 32 not in report
        assert "upstream refused the request" in report  # the report itself is still useful


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("Authorization: Bearer lw-abcdefghijklmnopqrstuvwxyz", "lw-abcdefghijklmnop"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA"),
        ("x-api-key: sk-ant-api03-abcdefghijklmnop", "abcdefghijklmnop"),
        ("calling with sk-proj-abcdefghijklmnopqrst", "abcdefghijklmnopqrst"),
        # Assembled at run time so that no secret-shaped literal sits in the repository.
        ("stripe key sk_" + "live_51HabcdefghijKLMNOP", "51HabcdefghijKLMNOP"),
        ("webhook secret whsec_abcdefghijklmnop", "abcdefghijklmnop"),
        ("Stripe-Signature: t=1700000000,v1=" + "0f" * 32, "0f" * 32),
        ("gemini AIzaSyA1234567890abcdefghijklmnopqrstu", "1234567890abcdefghij"),
    ],
)
def test_the_filter_redacts_every_kind_of_secret(line: str, secret: str) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", (line,), None)
    SecretRedactionFilter().filter(record)
    assert secret not in record.getMessage()
    assert REDACTED in record.getMessage()


def test_the_filter_leaves_ordinary_lines_and_their_arguments_alone() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "settled %s for %d", ("req_1", 5), None
    )
    SecretRedactionFilter().filter(record)
    assert (record.msg, record.args) == ("settled %s for %d", ("req_1", 5))
    assert (
        redact("the task-queue sk- prefix is not a key") == "the task-queue sk- prefix is not a key"
    )


def test_the_filter_redacts_tracebacks_and_extras() -> None:
    try:
        raise RuntimeError("boom with lw-abcdefghijklmnopqrstu")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.headers = "Authorization: Bearer abcdefghijklmnop"
    SecretRedactionFilter().filter(record)
    assert record.exc_text is not None
    assert "lw-abcdefghijklmnopqrstu" not in record.exc_text
    assert "abcdefghijklmnop" not in record.headers


def test_every_configured_handler_redacts(settings: Any) -> None:
    for name, handler in settings.LOGGING["handlers"].items():
        assert "redact_secrets" in handler.get("filters", []), name
    assert settings.DEFAULT_EXCEPTION_REPORTER_FILTER.endswith(
        "SecretRedactingExceptionReporterFilter"
    )
