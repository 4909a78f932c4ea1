"""``{{ micros|usd_cents }}`` → ``$1,794.15``: amounts rounded to the cent for charts and KPIs.

Display only (half up, in integers): the exact micro-USD stay in the data and in the ``usd``
filter used wherever an amount is billed.
"""

from __future__ import annotations

from django import template

register = template.Library()

MICROS_PER_CENT = 10_000
CENTS_PER_USD = 100


@register.filter
def usd_cents(micros: int | None) -> str:
    if micros is None:
        return ""
    value = int(micros)
    sign = "-" if value < 0 else ""
    cents = (abs(value) + MICROS_PER_CENT // 2) // MICROS_PER_CENT
    whole, fraction = divmod(cents, CENTS_PER_USD)
    return f"{sign}${whole:,}.{fraction:02d}"
