"""allauth hooks: every new user gets a personal organization in the sign-up transaction."""

from __future__ import annotations

import re
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialApp
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest

from . import services
from .models import User

# The per-account part of allauth's "login_failed" rule, e.g. "5/5m/key".
_KEY_RULE = re.compile(r"(\d+)/(\d*)([smhd])/key")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_LOGIN_RETRY_AFTER_SECONDS = 300


def login_failed_retry_after() -> int:
    """Seconds an account stays locked after too many failed logins (from the allauth rule)."""
    rules = settings.ACCOUNT_RATE_LIMITS
    rule = rules.get("login_failed", "") if isinstance(rules, dict) else ""
    found = _KEY_RULE.search(rule)
    if found is None:
        return DEFAULT_LOGIN_RETRY_AFTER_SECONDS
    return int(found.group(2) or 1) * _UNIT_SECONDS[found.group(3)]


class AccountAdapter(DefaultAccountAdapter):
    def pre_authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        """allauth refuses a locked account with a form error on a 200 page; mark the request so
        :class:`~apps.accounts.middleware.RateLimitStatusMiddleware` answers 429 instead."""
        try:
            super().pre_authenticate(request, **credentials)
        except ValidationError:
            request.rate_limit_retry_after = login_failed_retry_after()  # type: ignore[attr-defined]
            raise

    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> User:
        with transaction.atomic():
            saved: User = super().save_user(request, user, form, commit=commit)
            if commit:
                services.organization_create_personal(user=saved)
        return saved


class SocialAppMissing(SocialApp.DoesNotExist, Http404):
    """A social sign-in whose provider has no credentials configured here.

    allauth routes every installed provider (``/accounts/github/login/``…) and raises
    ``SocialApp.DoesNotExist`` for one without an app, which Django answers with a 500 (and an
    error report) to anyone who types the URL. Being an ``Http404`` too, it becomes a plain
    404 page, while allauth code that catches ``DoesNotExist`` still sees what it expects.
    """


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def get_app(self, request: HttpRequest, provider: Any, client_id: Any = None) -> SocialApp:
        try:
            app: SocialApp = super().get_app(request, provider, client_id=client_id)
        except SocialApp.DoesNotExist as exc:
            raise SocialAppMissing("This sign-in method is not enabled.") from exc
        return app
