"""Secrets out of logs and error reports, as defence in depth.

Our code never logs a secret on purpose (tests/security/test_secret_redaction.py proves it for a
realistic run); this module makes sure a mistake, a third-party library or an exception message
cannot put one into a log line or a Django error report either:

* :class:`SecretRedactionFilter` is installed on every handler in ``LOGGING`` and rewrites each
  record's message, arguments, traceback text and string extras, replacing API keys (ours and
  the providers'), Stripe keys, webhook secrets and signatures, and Authorization-style header
  values with ``[REDACTED]``.
* :class:`SecretRedactingExceptionReporterFilter` (``DEFAULT_EXCEPTION_REPORTER_FILTER``) hides
  the same patterns in error reports' frame variables and POST data, on top of Django's
  name-based cleansing of settings and request headers.

It also gives every log line the context of the request (or Celery task) it belongs to:

* :func:`log_context_bind` stores fields (``request_id``, ``org_id``, ``task_id``…) in a
  :class:`~contextvars.ContextVar`. The request-id middleware binds the request id, API-key
  authentication and the dashboard's organization lookup bind the organization. A context
  variable follows the request through ``await``, ``sync_to_async`` threads and tasks it starts,
  and never leaks into another request served by the same event loop.
* :class:`JsonFormatter` (``LOG_FORMAT=json``, the production default) writes one JSON object per
  line: ``ts``, ``level``, ``logger``, ``message``, ``request_id``, ``org_id``, the other bound
  fields, ``exception`` and simple ``extra=`` values. :class:`TextFormatter` (development) adds
  ``[request id]`` to the human-readable line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

REDACTED = "[REDACTED]"

# Values that are secrets whatever they are called. Each pattern needs enough characters after
# the prefix to be a real key, so "sk-" in ordinary prose is left alone.
SECRET_VALUE_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\blw-[A-Za-z0-9_\-]{8,}"),  # LLMWise API keys
    # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), OpenRouter (sk-or-v1-), DeepSeek, ...
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]{8,}"),  # Stripe secret/restricted keys
    re.compile(r"\bwhsec_[A-Za-z0-9_+/=]{8,}"),  # Stripe webhook signing secrets
    re.compile(r"\bv[01]=[0-9a-f]{32,}"),  # Stripe-Signature's signatures
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google (Gemini) API keys
    re.compile(r"\bgsk_[A-Za-z0-9]{20,}"),  # Groq
    re.compile(r"\bxai-[A-Za-z0-9]{20,}"),  # xAI
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}"),  # any bearer token
)
# Header-like "name: value" / "name=value" pairs whose value is a credential, whatever it looks
# like (dict reprs included: 'authorization': 'Basic ...').
SECRET_HEADER_PATTERN = re.compile(
    r"(?i)(?P<name>\b(?:authorization|proxy-authorization|x-api-key|x-goog-api-key|api[-_]key"
    r"|stripe-signature|cookie|set-cookie)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>[^'\"\r\n,;}]+)"
)


def redact(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = SECRET_HEADER_PATTERN.sub(lambda m: m.group("name") + REDACTED, text)
    for pattern in SECRET_VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


# LogRecord attributes that are not free text; everything else that is a string may be an extra.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class SecretRedactionFilter(logging.Filter):
    """Rewrites a record in place so no handler (console, JSON, mail, Sentry) sees a secret.

    It never drops a record. The message is rendered once here (``msg % args``) so a secret in
    the arguments is caught too; a traceback is formatted here and redacted into ``exc_text``,
    which formatters use instead of formatting ``exc_info`` again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's own error path
            return True
        cleaned = redact(message)
        if cleaned != message:  # untouched records keep msg/args (log aggregators group by them)
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class SecretRedactingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error-report filter, also hiding secrets by their look, not only by their name.

    Name-based cleansing (settings and request headers matching API, AUTH, TOKEN, KEY, SECRET,
    PASS, SIGNATURE, COOKIE) stays; local variables and POST values whose text contains a
    secret pattern are replaced as well, so a ``body`` or ``headers`` variable holding a key
    never shows it.
    """

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|COOKIE|DSN|CREDENTIAL", flags=re.IGNORECASE
    )

    def _cleansed(self, value: Any) -> Any:
        try:
            text = value if isinstance(value, str) else repr(value)
        except Exception:  # a broken __repr__: the report shows Django's own placeholder
            return value
        if redact(text) != text:
            return self.cleansed_substitute
        return value

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        params = super().get_post_parameters(request)
        if not isinstance(params, Mapping) or request is None:
            return params
        cleaned = params.copy()
        for name in list(cleaned.keys()):
            cleaned[name] = self._cleansed(cleaned[name])
        return cleaned

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, self._cleansed(value)) for name, value in variables]


# --- request context on every line ----------------------------------------------------------------
LogValue = str | int | None
_NO_CONTEXT: Mapping[str, LogValue] = {}
_log_context: ContextVar[Mapping[str, LogValue]] = ContextVar(
    "llmwise_log_context", default=_NO_CONTEXT
)
# Fields every JSON line has, null when unknown, so log queries need not test for presence.
ALWAYS_FIELDS = ("request_id", "org_id")
# Extras left out of JSON lines: uvicorn's copy of its message with terminal colour codes.
IGNORED_EXTRAS = frozenset({"color_message"})
# Longest text kept for an ``extra=`` value that is not a plain string or number.
EXTRA_TEXT_MAX_CHARS = 2000
# Called with each JSON entry when tracing is on (llmwise.observability adds the trace id).
log_entry_hooks: list[Callable[[dict[str, Any]], None]] = []


def log_context_bind(*, reset: bool = False, **fields: LogValue) -> None:
    """Add ``fields`` to the log context of the current request or task (``reset``: start from
    an empty context, as a new request does). Cheap: one small dict per call."""
    current = _NO_CONTEXT if reset else _log_context.get()
    _log_context.set({**current, **fields})


def log_context_push(**fields: LogValue) -> Token[Mapping[str, LogValue]]:
    """Add ``fields`` until :func:`log_context_pop` (a task run inline inside a request keeps
    the request's fields, and gives its own back when it ends)."""
    return _log_context.set({**_log_context.get(), **fields})


def log_context_pop(token: Token[Mapping[str, LogValue]]) -> None:
    # Pushed in another context (a task that ended elsewhere): nothing to undo here.
    with contextlib.suppress(ValueError):
        _log_context.reset(token)


def log_context() -> Mapping[str, LogValue]:
    """The fields bound in the current context (read-only)."""
    return _log_context.get()


def _plain(value: Any) -> Any:
    """A JSON-safe, secret-free rendering of an ``extra=`` value."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return redact(text[:EXTRA_TEXT_MAX_CHARS])


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Run after :class:`SecretRedactionFilter` (every configured
    handler has it); values this formatter renders itself are redacted here as well."""

    def format(self, record: logging.LogRecord) -> str:
        context = _log_context.get()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ALWAYS_FIELDS:
            entry[name] = context.get(name)
        for name, value in context.items():
            entry.setdefault(name, value)
        for name, value in vars(record).items():
            if name in _RECORD_FIELDS or name in IGNORED_EXTRAS or name.startswith("_"):
                continue
            entry.setdefault(name, _plain(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        for hook in log_entry_hooks:
            hook(entry)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable line, with ``[request id]`` before the message inside a request.

    ``fmt`` may use ``%(context)s``, which is the bracketed request id and a space (or nothing).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = _log_context.get().get("request_id")
        context = f"[{request_id}] " if request_id else ""
        return str(self._fmt or "%(message)s") % {**vars(record), "context": context}
