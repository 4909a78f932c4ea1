"""``{{ micros|usd }}`` → ``$12.50`` or ``$0.001234``: exact, at least two decimals."""

from __future__ import annotations

from django import template

from apps.wallet.models import format_usd

register = template.Library()

MIN_DECIMALS = 2


@register.filter
def usd(micros: int | None) -> str:
    if micros is None:
        return ""
    text = format_usd(int(micros))
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(MIN_DECIMALS, "0")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}${int(whole.lstrip('-')):,}.{fraction}"
