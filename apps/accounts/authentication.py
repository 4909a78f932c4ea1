"""DRF authentication by API key: ``Authorization: Bearer lw-…``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from llmwise.errors import Unauthenticated

from . import services
from .models import ApiKey


def client_ip(request: HttpRequest | Request) -> str | None:
    """The caller's IP address, for per-IP limits.

    ``REMOTE_ADDR``, unless ``ALLAUTH_TRUSTED_PROXY_COUNT`` (env ``TRUSTED_PROXY_COUNT``) says
    that many proxies of ours append to ``X-Forwarded-For``: then the address the outermost of
    them saw. The same setting drives allauth's login limits, so both agree on who the client is.
    A client-sent X-Forwarded-For is never trusted beyond that.
    """
    meta = request.META
    proxies: int = settings.ALLAUTH_TRUSTED_PROXY_COUNT
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    address = meta.get("REMOTE_ADDR")
    return str(address) if address else None


class ApiKeyPrincipal:
    """What ``request.user`` is for an API call: the organization acting through a key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.organization = api_key.organization

    def __str__(self) -> str:
        return f"api_key:{self.api_key.prefix}"


BEARER_HINT = "Use 'Authorization: Bearer <your LLMWise API key>'."


class MetaHeaders:
    """``request.headers.get`` for a few names, read straight from ``request.META``. Django
    builds the whole ``HttpHeaders`` mapping on first use of ``request.headers``; a chat call
    reads two headers and need not pay for the rest."""

    __slots__ = ("meta",)

    def __init__(self, request: HttpRequest) -> None:
        self.meta = request.META

    def get(self, name: str, default: str = "") -> str:
        value: str = self.meta.get("HTTP_" + name.upper().replace("-", "_"), default)
        return value


def api_key_secret(headers: Mapping[str, str] | MetaHeaders) -> str:
    """The API key a request carries: ``Authorization: Bearer …``, else ``x-api-key`` (the
    Anthropic SDK's header, accepted on every endpoint); '' when there is none. Another
    Authorization scheme raises :class:`Unauthenticated`. Shared by the DRF endpoints and the
    async gateway views, so both read a key the same way."""
    header = headers.get("authorization", "")
    if not header:
        return headers.get("x-api-key", "").strip()
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(BEARER_HINT)
    return secret.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        try:
            secret = api_key_secret(request.headers)
        except Unauthenticated as exc:
            raise exceptions.AuthenticationFailed(exc.message) from exc
        if not secret:
            return None
        try:
            key = services.api_key_authenticate_limited(secret=secret, client_ip=client_ip(request))
        except services.TooManyFailedAuthentications as exc:
            # Throttled: the API's error handler answers 429 with Retry-After in our envelope.
            raise exceptions.Throttled(wait=exc.retry_after, detail=exc.message) from exc
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
