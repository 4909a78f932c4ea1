"""Trial credit: granted once, to the personal organization, only after email verification."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from apps.accounts.models import Organization, User
from apps.wallet.models import LedgerEntry, Wallet
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _confirm_path() -> str:
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mail.outbox[-1].body)
    assert link is not None
    return "/" + link.group(0).split("/", 3)[3]


def test_trial_credit_after_email_verification_only(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRIAL_CREDIT_MICROS = 1_000_000
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    user = User.objects.get(email="ada@example.com")
    org = Organization.objects.get(memberships__user=user, is_personal=True)
    # Signed up but not verified: no credit yet.
    assert not LedgerEntry.objects.filter(organization=org).exists()

    path = _confirm_path()
    assert client.post(path).status_code == 302
    trial = LedgerEntry.objects.get(organization=org)
    assert (trial.kind, trial.amount_micros) == (LedgerEntry.Kind.TRIAL_GRANT, 1_000_000)
    assert Wallet.objects.get(organization=org).balance_micros == 1_000_000

    # Confirming again (the link replayed) grants nothing more.
    client.post(path)
    assert LedgerEntry.objects.filter(organization=org).count() == 1


def test_trial_amount_is_configurable_and_zero_disables_it(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRIAL_CREDIT_MICROS = 0
    client = Client()
    client.post(
        "/accounts/signup/",
        {"email": "bo@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    client.post(_confirm_path())
    assert User.objects.filter(email="bo@example.com").exists()
    assert not LedgerEntry.objects.exists()
