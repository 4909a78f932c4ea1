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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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
