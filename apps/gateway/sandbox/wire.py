"""What every sandbox wire format provides, and the plain ASGI plumbing they share."""

from __future__ import annotations

import abc
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from .faults import Fault
from .text import Answer, Prompt

INVALID_KEY_PREFIX = "invalid"  # keys starting with this are refused like a revoked key
DEFAULT_RETRY_AFTER_SECONDS = 1
_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):012d}sandbox"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, dumps(payload), headers or [])


@dataclass(slots=True)
class Call:
    """One request to a provider path, decoded."""

    provider: str
    method: str
    path: str  # after the provider prefix
    headers: dict[str, str]
    query: dict[str, str]
    body: Any  # decoded JSON, or None when the body was not JSON
    model: str = ""  # from the path (Gemini) or the body

    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class BadRequest(Exception):
    """The request is malformed for this wire format: answered 400 in its shape."""


class Wire(abc.ABC):
    """One provider family's wire format, as the sandbox speaks it."""

    @abc.abstractmethod
    def route(self, call: Call) -> str | None:
        """ "chat", "models" or None (unknown path) for this call."""

    @abc.abstractmethod
    def auth_error(self, call: Call) -> Reply | None:
        """The provider's own refusal for a missing or invalid key, else None."""

    @abc.abstractmethod
    def parse(self, call: Call) -> Prompt:
        """The prompt from the request body; BadRequest when it is malformed."""

    @abc.abstractmethod
    def bad_request(self, message: str) -> Reply: ...

    @abc.abstractmethod
    def not_found(self, message: str) -> Reply: ...

    @abc.abstractmethod
    def fault_reply(self, fault: Fault, *, call: Call, prompt: Prompt, retry_after: int) -> Reply:
        """The HTTP error this provider answers for ``fault``."""

    @abc.abstractmethod
    def completion(self, *, call: Call, prompt: Prompt, answer: Answer, finish: str) -> Reply:
        """A non-streamed success. ``finish`` is stop, length or content_filter."""

    @abc.abstractmethod
    def stream_head(self, *, call: Call, prompt: Prompt, answer: Answer) -> list[bytes]: ...

    @abc.abstractmethod
    def stream_delta(self, *, call: Call, prompt: Prompt, answer: Answer, text: str) -> bytes: ...

    @abc.abstractmethod
    def stream_tail(
        self, *, call: Call, prompt: Prompt, answer: Answer, finish: str, with_usage: bool
    ) -> list[bytes]:
        """Everything after the last delta, terminal event included."""

    @abc.abstractmethod
    def stream_error(self, *, call: Call) -> bytes:
        """The provider's in-stream error event (an overload, as real ones mostly are)."""

    @abc.abstractmethod
    def models(self, *, call: Call) -> Reply: ...


def sse(data: Any, *, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"
