"""Receivers for allauth's signals. Thin: they call a service.

Trial credit is the abuse guard's reward: it is granted only once the user's email address is
verified (by the confirmation link, or already verified by a social provider at sign-up).
"""

from __future__ import annotations

from typing import Any

from allauth.account.models import EmailAddress
from django.http import HttpRequest

from apps.accounts.models import User

from . import services


def grant_trial_on_email_confirmed(
    sender: Any, request: HttpRequest | None, email_address: EmailAddress, **kwargs: Any
) -> None:
    services.trial_grant_for_user(user=email_address.user)


def grant_trial_on_verified_signup(
    sender: Any, request: HttpRequest | None, user: User, **kwargs: Any
) -> None:
    if EmailAddress.objects.filter(user=user, verified=True).exists():
        services.trial_grant_for_user(user=user)
