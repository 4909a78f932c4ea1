"""grant_credits: an operator's audited adjustment, with clear errors."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.accounts.models import AuditEvent
from apps.wallet import selectors
from apps.wallet.models import LedgerEntry, Wallet
from tests.conftest import Personas

pytestmark = pytest.mark.django_db


def test_grant_credits_adds_an_audited_adjustment(
    personas: Personas, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("grant_credits", org=personas.org.slug, usd="12.345678", note="goodwill")
    entry = LedgerEntry.objects.get(organization=personas.org)
    assert entry.kind == LedgerEntry.Kind.ADJUSTMENT
    assert entry.amount_micros == 12_345_678
    assert entry.note == "goodwill"
    assert entry.actor is None
    event = AuditEvent.objects.get(organization=personas.org, action="wallet.grant")
    assert event.actor_label == "system"
    assert event.data["amount_usd"] == "12.345678"
    assert "Granted 12.345678 USD" in capsys.readouterr().out
    assert Wallet.objects.get(organization=personas.org).balance_micros == 12_345_678

    call_command("grant_credits", org=personas.org.slug, usd="-2.345678", note="correction")
    assert Wallet.objects.get(organization=personas.org).balance_micros == 10_000_000
    assert selectors.wallet_audit_problems() == []


def test_grant_credits_unknown_org(personas: Personas) -> None:
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        call_command("grant_credits", org="nope", usd="5", note="x")


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("abc", "must be a number"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("0", "not be zero"),
        ("0.0000001", "6 decimal places"),
        ("1e9", "limited"),
        ("-1", "available"),  # nothing to take back
    ],
)
def test_grant_credits_bad_amounts_change_nothing(
    personas: Personas, amount: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("grant_credits", org=personas.org.slug, usd=amount, note="x")
    assert not LedgerEntry.objects.exists()
    assert not AuditEvent.objects.filter(action="wallet.grant").exists()


def test_grant_credits_requires_a_note(personas: Personas) -> None:
    with pytest.raises(CommandError, match="note"):
        call_command("grant_credits", org=personas.org.slug, usd="5", note="   ")
    assert not LedgerEntry.objects.exists()
