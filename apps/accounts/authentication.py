"""DRF authentication by API key: ``Authorization: Bearer lw-…``."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from . import services
from .models import ApiKey


class ApiKeyPrincipal:
    """What ``request.user`` is for an API call: the organization acting through a key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.organization = api_key.organization

    def __str__(self) -> str:
        return f"api_key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            # The Anthropic SDK sends its key in x-api-key; accept the same for every endpoint.
            secret = request.headers.get("x-api-key", "")
        else:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != self.keyword.lower():
                raise exceptions.AuthenticationFailed(
                    "Use 'Authorization: Bearer <your LLMWise API key>'."
                )
        secret = secret.strip()
        if not secret:
            return None
        key = services.api_key_authenticate(secret=secret)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
