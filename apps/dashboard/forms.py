from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import timezone

from apps.accounts.models import Role

MICROS_PER_USD = 1_000_000


class NewsletterForm(forms.Form):
    email = forms.EmailField(label="Email address")


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="So you can tell your keys apart.")
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional. The key stops working at the start of this day (UTC).",
    )
    allowed_models = forms.CharField(
        required=False,
        label="Allowed models",
        help_text="Optional, comma-separated model ids. Empty means every model.",
    )
    rpm_limit = forms.IntegerField(required=False, min_value=1, label="Requests per minute")
    tpm_limit = forms.IntegerField(required=False, min_value=1, label="Tokens per minute")
    retention = forms.ChoiceField(
        required=False,
        label="Prompt and completion text",
        choices=[
            ("", "Follow the organization's setting"),
            ("zero", "Never store (zero retention)"),
            ("keep", "Store, for the request log"),
        ],
    )
    spend_cap_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        label="Spend cap (USD)",
    )

    def clean_expires_on(self) -> dt.date | None:
        value: dt.date | None = self.cleaned_data.get("expires_on")
        if value is not None and value <= timezone.now().date():
            raise forms.ValidationError("Pick a date after today.")
        return value

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        expires_on: dt.date | None = data.get("expires_on")
        cap: Decimal | None = data.get("spend_cap_usd")
        return {
            "name": data["name"],
            "expires_at": (
                dt.datetime.combine(expires_on, dt.time.min, tzinfo=dt.UTC) if expires_on else None
            ),
            "allowed_models": [m for m in data.get("allowed_models", "").split(",") if m.strip()],
            "rpm_limit": data.get("rpm_limit"),
            "tpm_limit": data.get("tpm_limit"),
            "spend_cap_micros": int(cap * MICROS_PER_USD) if cap is not None else None,
            "zero_retention": {"zero": True, "keep": False}.get(data.get("retention") or ""),
        }


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=[(Role.MEMBER, "Member"), (Role.ADMIN, "Admin")])


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=150)


class OrganizationSettingsForm(forms.Form):
    name = forms.CharField(max_length=150)
    zero_retention = forms.BooleanField(
        required=False,
        label="Zero retention",
        help_text="Store no prompt or completion text anywhere; metadata only.",
    )
    default_chain = forms.CharField(
        required=False,
        max_length=500,
        label="Default failover chain",
        help_text='Comma-separated model ids tried in order when a request says "mesh": true. '
        "Empty: other models of the same tier.",
    )
    low_balance_alert_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        label="Low-balance alert (USD)",
        help_text="Email owners and admins when available credit falls below this. "
        "Empty: no alert.",
    )

    def low_balance_alert_micros(self) -> int | None:
        value: Decimal | None = self.cleaned_data.get("low_balance_alert_usd")
        return int(value * MICROS_PER_USD) if value is not None else None
