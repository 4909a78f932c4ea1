from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from .models import MICROS_PER_USD, LedgerEntry

CUSTOM = "custom"


def _usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


class CreditPurchaseForm(forms.Form):
    """A preset amount or a custom one, in USD, within the configured limits."""

    amount = forms.ChoiceField(
        label="Amount",
        widget=forms.RadioSelect,
        initial="25",
        choices=[],
    )
    custom_usd = forms.DecimalField(
        required=False,
        label="Other amount (USD)",
        max_digits=12,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    currency = forms.ChoiceField(
        choices=[("usd", "USD")],
        initial="usd",
        widget=forms.HiddenInput,
        error_messages={"invalid_choice": "Credit is sold in USD only."},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        low = _usd(settings.WALLET_PURCHASE_MIN_MICROS)
        high = _usd(settings.WALLET_PURCHASE_MAX_MICROS)
        amount = self.fields["amount"]
        assert isinstance(amount, forms.ChoiceField)  # noqa: S101 - declared above
        amount.choices = [(str(p), f"${p}") for p in settings.WALLET_PURCHASE_PRESETS_USD] + [
            (CUSTOM, "Other amount")
        ]
        self.fields["custom_usd"].help_text = f"From ${low:,.0f} to ${high:,.0f}."
        self.low, self.high = low, high

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        choice = data.get("amount")
        if choice == CUSTOM:
            value = data.get("custom_usd")
            if value is None:
                if "custom_usd" not in self.errors:
                    self.add_error("custom_usd", "Enter the amount you want to buy.")
                return data
            if not value.is_finite() or not self.low <= value <= self.high:
                self.add_error(
                    "custom_usd",
                    f"Choose an amount between ${self.low:,.0f} and ${self.high:,.0f}.",
                )
                return data
            data["amount_micros"] = int(value * MICROS_PER_USD)
        elif choice:
            data["amount_micros"] = int(Decimal(choice) * MICROS_PER_USD)
        return data


class LowBalanceAlertForm(forms.Form):
    threshold_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        label="Email owners and admins when available credit falls below (USD)",
        help_text="Leave empty to turn the alert off.",
    )

    def threshold_micros(self) -> int | None:
        value: Decimal | None = self.cleaned_data.get("threshold_usd")
        return int(value * MICROS_PER_USD) if value is not None else None


class LedgerFilterForm(forms.Form):
    kind = forms.ChoiceField(
        required=False, choices=[("", "All kinds"), *LedgerEntry.Kind.choices], label="Kind"
    )
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start: dt.date | None = data.get("date_from")
        end: dt.date | None = data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> dict[str, Any]:
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        return {
            "kind": data.get("kind") or None,
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }
