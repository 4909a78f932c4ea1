"""``{{ micros|usd_cents }}`` → ``$1,794.15``: amounts rounded to the cent for charts and KPIs.

Display only (half up, in integers): the exact micro-USD stay in the data and in the ``usd``
filter used wherever an amount is billed. ``{% series_table_rows usage %}``: the rows of the
Overview's per-bucket data table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import template
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

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


NO_VALUE = "\N{EN DASH}"  # shown for a percentile of a bucket without requests


def _count(value: int | float | None) -> str:
    return NO_VALUE if value is None else f"{round(value):,}"


@register.simple_tag
def series_table_rows(usage: Any) -> SafeString:
    """The ``<tr>`` rows of the Overview's data table, one per time bucket.

    Built with ``format_html_join`` (every cell escaped) rather than a template loop: a month by
    the hour is 720 rows of 8 cells, and Django's per-variable template rendering cost ~150 ms
    for them where this takes a few (measured with bench/dashboard_overview.py).
    """
    hourly = usage.window.granularity == "hour"
    label_format = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    points: list[Mapping[str, Any]] = usage.series
    return format_html_join(
        "\n",
        '<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>{}</td><td>{}</td></tr>",
        (
            (
                point["bucket"].strftime(label_format),
                _count(point["requests"]),
                _count(point["errors"]),
                usd_cents(point["charged_micros"]),
                usd_cents(point["cost_micros"]),
                _count(point["tokens"]),
                _count(point["p50_ms"]),
                _count(point["p95_ms"]),
            )
            for point in points
        ),
    )
