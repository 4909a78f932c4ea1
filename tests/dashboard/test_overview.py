"""The Overview page: analytics from the rollups, through HTTP, with the personas."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Organization, User
from apps.gateway.models import RequestLog
from apps.gateway.rollups import rollups_update
from apps.wallet import services as wallet_services
from tests.conftest import Personas
from tests.usage_factory import log_row

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

OVERVIEW = reverse("dashboard:overview")
XSS = "<script>alert(1)</script>"


def _key(org: Organization, owner: User, name: str) -> ApiKey:
    return account_services.api_key_create(org=org, name=name, created_by=owner).api_key


def _chart_data(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="overview-data" type="application/json">(.*?)</script>', html)
    assert match, "no chart data on the page"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def _acme_traffic(personas: Personas) -> ApiKey:
    key = _key(personas.org, personas.owner, "backend")
    for i in range(8):
        log_row(
            personas.org,
            api_key=key,
            ago=timedelta(hours=1 + i * 20),
            cost_micros=2_000_000,
            latency_ms=100 + i,
        )
    log_row(
        personas.org,
        api_key=key,
        model="claude-haiku-4.5",
        provider="anthropic",
        status=RequestLog.Status.ERROR,
        http_status=503,
        cost_micros=0,
    )
    log_row(
        personas.org,
        api_key=key,
        requested_model="auto",
        cost_micros=500,
        prompt_tokens=1000,
        completion_tokens=500,
        route={"requested": "auto", "chosen": "gpt-4o-mini", "category": "coding"},
    )
    return key


def test_overview_shows_the_orgs_traffic_from_the_rollups(personas: Personas) -> None:
    _acme_traffic(personas)
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=100_000_000, note="test funds")
    rollups_update()
    with CaptureQueriesContext(connection) as queries:
        response = personas.client(personas.member).get(OVERVIEW, {"range": "30d"})
    assert response.status_code == 200
    # The page never reads the raw request log.
    assert not [q["sql"] for q in queries.captured_queries if "gateway_requestlog" in q["sql"]]
    html = response.content.decode()
    assert 'data-kpi="requests">10<' in html
    assert 'data-kpi="charged">$16.00<' in html  # KPIs round to the cent; the data stays exact
    assert "gpt-4o-mini" in html
    assert "claude-haiku-4.5" in html
    assert "backend" in html
    assert "coding" in html
    assert "Uncategorized" in html
    # Burn rate: $100 left; charged in the last 7 days: rows at 1, 21, 41, ..., 141 hours ago.
    charged_7d = sum(2_000_000 for i in range(8) if 1 + i * 20 < 7 * 24) + 500
    days_left = 100_000_000 / (charged_7d // 7)
    assert f'data-kpi="days-left">{round(days_left)} day' in html
    assert 'data-kpi="savings">' in html
    data = _chart_data(html)
    assert len(data["labels"]) == 30
    assert sum(data["requests"]) == 10
    assert sum(data["errors"]) == 1
    assert sum(data["charged_micros"]) == 16_000_500
    assert set(data["models"]["labels"]) == {"gpt-4o-mini", "claude-haiku-4.5"}
    # Charts load from our static files; no inline script carries data.
    assert "vendor/chart.umd.min.js" in html
    assert "js/overview.js" in html
    assert "cdn" not in html.lower()
    # Tables are tables with headers; the charts have a data-table fallback.
    for table in ("series-table", "models-table", "keys-table", "categories-table"):
        assert f'id="{table}"' in html
    assert html.count('<th scope="col">') >= 20


def test_empty_overview_says_what_to_do_next(personas: Personas) -> None:
    rollups_update()
    response = personas.client(personas.owner).get(OVERVIEW)
    assert response.status_code == 200
    html = response.content.decode()
    assert "No requests in this range yet" in html
    assert "Create an API key" in html
    assert "Getting started" in html
    assert 'id="overview-data"' not in html
    assert "No charged spend in the last 7 days" in html


def test_another_orgs_traffic_never_appears(personas: Personas) -> None:
    _acme_traffic(personas)
    globex_key = _key(personas.other_org, personas.outsider, "globex-secret-pipeline")
    log_row(
        personas.other_org,
        api_key=globex_key,
        model="grok-3",
        provider="xai",
        route={"requested": "auto", "chosen": "grok-3", "category": "globex-only-category"},
        requested_model="auto",
        cost_micros=123_456,
    )
    rollups_update()
    acme = personas.client(personas.owner).get(OVERVIEW, {"range": "30d"}).content.decode()
    for secret in ("globex-secret-pipeline", "grok-3", "globex-only-category"):
        assert secret not in acme
    assert sum(_chart_data(acme)["requests"]) == 10
    globex = personas.client(personas.outsider).get(OVERVIEW, {"range": "30d"}).content.decode()
    assert "globex-secret-pipeline" in globex
    assert "grok-3" in globex
    assert "backend" not in globex
    assert "claude-haiku-4.5" not in globex
    assert sum(_chart_data(globex)["requests"]) == 1


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ("7d", "day", 7)),
        ({"range": "24h"}, ("24h", "hour", 24)),
        ({"range": "7d", "granularity": "hour"}, ("7d", "hour", 168)),
        ({"range": "30d", "granularity": "hour"}, ("30d", "hour", 720)),
        ({"range": "30d", "granularity": "minute"}, ("30d", "day", 30)),
        ({"range": "24h", "granularity": "day"}, ("24h", "hour", 24)),
        ({"range": "1y"}, ("7d", "day", 7)),
        ({"range": "<b>", "granularity": "'; drop"}, ("7d", "day", 7)),
        ({"range": ["24h", "30d"]}, ("30d", "day", 30)),  # the last value wins, like Django
    ],
)
def test_range_parameter_is_validated(
    personas: Personas, params: dict[str, Any], expected: tuple[str, str, int]
) -> None:
    log_row(personas.org, ago=timedelta(minutes=30))
    rollups_update()
    response = personas.client(personas.owner).get(OVERVIEW, params)
    assert response.status_code == 200
    window = response.context["usage"].window
    assert (window.range_key, window.granularity, len(window.buckets)) == expected
    assert len(_chart_data(response.content.decode())["labels"]) == expected[2]
    assert "&lt;b&gt;" not in response.content.decode()  # the bad value is not echoed


def test_key_names_and_model_ids_are_escaped(personas: Personas) -> None:
    key = _key(personas.org, personas.owner, f"evil {XSS}")
    log_row(
        personas.org,
        api_key=key,
        model=f"m{XSS}",
        provider="openai",
        route={"requested": "auto", "category": f"c{XSS}"},
    )
    rollups_update()
    html = personas.client(personas.owner).get(OVERVIEW).content.decode()
    assert XSS not in html
    assert escape(f"evil {XSS}") in html
    assert escape(f"m{XSS}") in html
    # json_script escapes <, > and & inside the data block too.
    assert _chart_data(html)["models"]["labels"] == [f"m{XSS}"]


def test_rollups_lag_behind_the_log_not_the_page(personas: Personas) -> None:
    """New rows appear on the Overview once the job has run, never by scanning the log."""
    log_row(personas.org, ago=timedelta(minutes=30))
    rollups_update()
    client = personas.client(personas.owner)
    assert sum(_chart_data(client.get(OVERVIEW).content.decode())["requests"]) == 1
    log_row(personas.org, ago=timedelta(minutes=20))
    assert sum(_chart_data(client.get(OVERVIEW).content.decode())["requests"]) == 1
    rollups_update()
    assert sum(_chart_data(client.get(OVERVIEW).content.decode())["requests"]) == 2


@pytest.mark.parametrize(("params", "rows"), [({"range": "30d", "granularity": "hour"}, 720)])
def test_the_data_table_has_a_row_per_bucket(
    personas: Personas, params: dict[str, str], rows: int
) -> None:
    # All three in one hour's bucket, whatever the time of the run: hh:30 two hours ago, and
    # one and two minutes before that.
    now = timezone.now()
    half_past = timedelta(hours=2, minutes=now.minute - 30, seconds=now.second)
    for i in range(3):
        log_row(
            personas.org, ago=half_past + timedelta(minutes=i), latency_ms=1500, cost_micros=10**6
        )
    rollups_update()
    html = personas.client(personas.owner).get(OVERVIEW, params).content.decode()
    table = html[
        html.index('id="series-table"') : html.index("</table>", html.index("series-table"))
    ]
    body = re.findall(r'<tr><th scope="row">([^<]*)</th>((?:<td>[^<]*</td>)+)</tr>', table)
    assert len(body) == rows
    cells = [re.findall(r"<td>([^<]*)</td>", cells) for _label, cells in body]
    assert sum(int(row[0].replace(",", "")) for row in cells) == 3
    busy = next(row for row in cells if row[0] == "3")
    assert busy[2] == "$3.00"  # charged, rounded to the cent
    assert busy[5] != "\N{EN DASH}"  # a p50 where there were requests
    assert cells[0][5] == "\N{EN DASH}"  # none where there were none
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:00", body[-1][0])


def test_getting_started_checklist_until_every_step_is_done(personas: Personas) -> None:
    from apps.wallet.models import CreditPurchase

    client = personas.client(personas.owner)
    html = client.get(OVERVIEW).content.decode()
    section = html[html.index('id="getting-started"') :]
    for step in ("Verify your email address", "Buy credits", "Create an API key", "first API call"):
        assert step in section
    # Copy-paste snippets with this server's base URL (curl and the openai SDK).
    assert "curl http://testserver/v1/chat/completions" in section
    assert 'base_url="http://testserver/v1"' in section
    assert 'data-copy-target="snippet-curl"' in section
    assert f'href="{reverse("dashboard:billing")}" class="checklist-action"' in section

    # Buy credits (a paid purchase), create a key, call with it: the checklist goes away.
    CreditPurchase.objects.create(
        public_id="pur_checklist1",
        organization=personas.org,
        wallet=wallet_services.wallet_for_org(org=personas.org),
        amount_micros=25_000_000,
        stripe_checkout_session_id="cs_test_checklist1",
        created_by=personas.owner,
    )
    wallet_services.purchase_credit(
        public_id="pur_checklist1",
        checkout_session_id="cs_test_checklist1",
        payment_intent_id="pi_test_checklist1",
        amount_cents=2500,
        currency="usd",
    )
    steps = dict(client.get(OVERVIEW).context["checklist"])
    assert steps == {
        "Verify your email address": True,
        "Buy credits": True,
        "Create an API key": False,
        "Make your first API call": False,
    }
    key = _key(personas.org, personas.owner, "backend")
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=key.created_at)
    log_row(personas.org, api_key=key, ago=timedelta(minutes=30))
    rollups_update()
    done = client.get(OVERVIEW)
    assert done.context["checklist_done"] is True
    assert 'id="getting-started"' not in done.content.decode()
    # Another organization's purchase never ticks Globex's box.
    assert (
        dict(personas.client(personas.outsider).get(OVERVIEW).context["checklist"])["Buy credits"]
        is False
    )
