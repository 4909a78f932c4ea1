"""Reading the request log: GET /api/v1/requests[/<id>] and the dashboard's Usage & logs pages.

Rows that must match a real charge come from real calls to /v1/chat/completions (the provider is
the sandbox, over real HTTP); volume and filter cases write rows directly.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Organization
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, format_usd
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

MODEL = "gpt-4o-mini"
USAGE = "/dashboard/usage/"
XSS_PROMPT = "<script>alert(1)</script>"
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


def _issue(org: Organization, owner: Any, name: str = "backend") -> tuple[ApiKey, str]:
    issued = account_services.api_key_create(org=org, name=name, created_by=owner)
    return issued.api_key, issued.secret


def _fund(org: Organization) -> None:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="test funds")


def _chat_call(secret: str, content: str) -> Any:
    response = Client().post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 50},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.content
    return response


def _row(org: Organization, *, api_key: ApiKey | None = None, **fields: Any) -> RequestLog:
    """A log row as the call service writes it; any field can be overridden."""
    n = next(_ids)
    values: dict[str, Any] = {
        "organization": org,
        "api_key": api_key,
        "request_id": f"req_test{n:06d}",
        "endpoint": "openai.chat",
        "requested_model": MODEL,
        "model": MODEL,
        "provider": "openai",
        "status": RequestLog.Status.OK,
        "http_status": 200,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_micros": 150,
        "latency_ms": 120,
        "upstream_ms": 100,
        "route": {"requested": MODEL, "chosen": MODEL, "reason": "requested"},
        "prompt": [{"role": "user", "content": f"question {n}"}],
        "completion": f"answer {n}",
        "created_at": timezone.now() - timedelta(seconds=n),
    }
    values.update(fields)
    if "model" in fields and "requested_model" not in fields:
        values["requested_model"] = fields["model"]
    return RequestLog.objects.create(**values)


def _api(secret: str | None, path: str, **params: Any) -> Any:
    extra = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret is not None else {}
    return Client().get(f"/api/v1/{path}", params, **extra)


def _ids_on_page(html: str) -> list[str]:
    return re.findall(r'data-request-id="([^"]+)"', html)


def _csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


# --- GET /api/v1/requests/<id> ----------------------------------------------------------------
def test_api_returns_own_request_matching_what_was_charged(personas: Personas) -> None:
    _fund(personas.org)
    key, secret = _issue(personas.org, personas.owner)
    call = _chat_call(secret, "What is the capital of France?")
    request_id = call["x-request-id"]
    answer = call.json()

    response = _api(secret, f"requests/{request_id}")
    assert response.status_code == 200, response.content
    body = response.json()
    charged = int(call["x-llmwise-cost-micros"])
    ledger = LedgerEntry.objects.get(request_id=request_id, kind=LedgerEntry.Kind.CHARGE)
    assert charged > 0
    assert -ledger.amount_micros == charged
    assert body["object"] == "request"
    assert body["id"] == request_id
    assert (body["status"], body["http_status"]) == ("ok", 200)
    assert (body["model"], body["requested_model"], body["provider"]) == (MODEL, MODEL, "openai")
    assert body["cost_micros"] == body["charged_micros"] == charged
    assert body["cost_usd"] == body["charged_usd"] == format_usd(charged)
    assert body["byok"] is False
    assert body["zero_retention"] is False
    usage = body["usage"]
    assert usage["prompt_tokens"] == answer["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert usage["total_tokens"] == answer["usage"]["total_tokens"]
    assert body["route"]["chosen"] == MODEL
    assert body["api_key"] == {"name": "backend", "prefix": key.prefix}
    assert body["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert body["completion"] == answer["choices"][0]["message"]["content"]
    assert body["latency_ms"] >= body["upstream_ms"] >= 0

    # Any key of the organization can reconcile it, not only the one that made the call.
    _, other_secret = _issue(personas.org, personas.owner, name="reporting")
    assert _api(other_secret, f"requests/{request_id}").json()["id"] == request_id
    _audit_ok()


def test_api_zero_retention_request_has_metadata_but_no_text(personas: Personas) -> None:
    personas.org.zero_retention = True
    personas.org.save()
    _fund(personas.org)
    _, secret = _issue(personas.org, personas.owner)
    call = _chat_call(secret, "zr-canary-77c1 keep this to yourself")

    response = _api(secret, f"requests/{call['x-request-id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["zero_retention"] is True
    assert body["prompt"] is None
    assert body["completion"] is None
    assert body["usage"]["prompt_tokens"] > 0
    assert body["cost_micros"] == int(call["x-llmwise-cost-micros"]) > 0
    assert "zr-canary-77c1" not in response.content.decode()
    _audit_ok()


def test_api_byok_request_shows_would_be_cost_and_no_charge(personas: Personas) -> None:
    key, secret = _issue(personas.org, personas.owner)
    log = _row(personas.org, api_key=key, byok=True, cost_micros=4_321)
    body = _api(secret, f"requests/{log.request_id}").json()
    assert (body["byok"], body["cost_micros"], body["charged_micros"]) == (True, 4_321, 0)
    assert (body["cost_usd"], body["charged_usd"]) == ("0.004321", "0.000000")


def test_api_another_orgs_request_is_404_without_data(personas: Personas) -> None:
    acme_key, _ = _issue(personas.org, personas.owner)
    log = _row(personas.org, api_key=acme_key, completion="acme-secret-answer")
    _, globex_secret = _issue(personas.other_org, personas.outsider)

    for request_id in (log.request_id, "req_does_not_exist"):
        response = _api(globex_secret, f"requests/{request_id}")
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("not_found_error", "request_not_found")
        assert error["request_id"] == response["x-request-id"]
        assert "acme-secret-answer" not in response.content.decode()


@pytest.mark.parametrize("header", [None, "Bearer lw-garbage", "Basic abc", "revoked"])
def test_api_needs_a_valid_key(personas: Personas, header: str | None) -> None:
    key, secret = _issue(personas.org, personas.owner)
    log = _row(personas.org, api_key=key)
    if header == "revoked":
        account_services.api_key_revoke(org=personas.org, actor=None, key_id=key.pk)
        header = f"Bearer {secret}"
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    for path in (f"/api/v1/requests/{log.request_id}", "/api/v1/requests"):
        response = Client().get(path, **extra)
        assert response.status_code == 401, (path, header)
        assert response.json()["error"]["type"] == "authentication_error"
        assert "question" not in response.content.decode()


# --- GET /api/v1/requests ---------------------------------------------------------------------
def test_api_list_is_newest_first_in_cursor_pages(personas: Personas) -> None:
    key, secret = _issue(personas.org, personas.owner)
    now = timezone.now()
    # Pairs share a timestamp, so the cursor must break ties by id.
    rows = [
        _row(personas.org, api_key=key, created_at=now - timedelta(seconds=i // 2))
        for i in range(25)
    ]
    _row(personas.other_org, request_id="req_globex_only")
    expected = [
        r.request_id for r in sorted(rows, key=lambda r: (r.created_at, r.pk), reverse=True)
    ]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        body = _api(secret, "requests", **params).json()
        pages += 1
        assert body["object"] == "list"
        assert all("prompt" not in item and "completion" not in item for item in body["data"])
        seen += [item["id"] for item in body["data"]]
        cursor = body["next_cursor"]
        assert body["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert pages == 3
    assert seen == expected

    default = _api(secret, "requests").json()
    assert len(default["data"]) == 20
    assert default["has_more"] is True


def test_api_list_filters(personas: Personas) -> None:
    key, secret = _issue(personas.org, personas.owner)
    other_key, _ = _issue(personas.org, personas.owner, name="batch")
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    ok = _row(personas.org, api_key=key, created_at=day)
    failed = _row(
        personas.org,
        api_key=key,
        status=RequestLog.Status.ERROR,
        http_status=429,
        error_type="rate_limit_error",
        error_code="rate_limited",
        created_at=day - timedelta(days=1),
    )
    claude = _row(personas.org, api_key=other_key, model="claude-haiku-4.5", created_at=day)
    byok = _row(personas.org, api_key=other_key, byok=True, created_at=day + timedelta(days=1))

    def ids(**params: Any) -> set[str]:
        response = _api(secret, "requests", **params)
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["data"]}

    assert ids() == {ok.request_id, failed.request_id, claude.request_id, byok.request_id}
    assert ids(model="claude-haiku-4.5") == {claude.request_id}
    assert ids(status="error") == {failed.request_id}
    assert ids(byok="true") == {byok.request_id}
    assert ids(byok="false") == {ok.request_id, failed.request_id, claude.request_id}
    assert ids(api_key=other_key.prefix) == {claude.request_id, byok.request_id}
    assert ids(date_from="2025-03-10", date_to="2025-03-10") == {ok.request_id, claude.request_id}
    assert ids(date_from="2025-03-11") == {byok.request_id}
    assert ids(date_to="2025-03-09") == {failed.request_id}
    assert ids(model=MODEL, status="ok", api_key=key.prefix) == {ok.request_id}
    error = _api(secret, "requests", status="error").json()["data"][0]["error"]
    assert error == {"type": "rate_limit_error", "code": "rate_limited"}


def test_api_list_never_shows_another_orgs_requests(personas: Personas) -> None:
    acme_key, _ = _issue(personas.org, personas.owner)
    _row(personas.org, api_key=acme_key, request_id="req_acme_private")
    _, globex_secret = _issue(personas.other_org, personas.outsider)
    body = _api(globex_secret, "requests", api_key=acme_key.prefix).json()
    assert body["data"] == []
    assert "req_acme_private" not in str(_api(globex_secret, "requests").json())


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "weird"}, "status"),
        ({"byok": "maybe"}, "byok"),
        ({"date_from": "yesterday"}, "date_from"),
        ({"date_from": "2025-03-10", "date_to": "2025-03-09"}, "date_to"),
    ],
)
def test_api_list_bad_input_is_400(personas: Personas, params: dict[str, Any], param: str) -> None:
    _, secret = _issue(personas.org, personas.owner)
    response = _api(secret, "requests", **params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


# --- Dashboard: list, detail ------------------------------------------------------------------
def test_dashboard_shows_a_real_call_to_every_member(personas: Personas) -> None:
    _fund(personas.org)
    _, secret = _issue(personas.org, personas.owner, name="production")
    call = _chat_call(secret, "Name three rivers in Europe")
    request_id = call["x-request-id"]
    cost = int(call["x-llmwise-cost-micros"])

    for user in (personas.owner, personas.admin, personas.member):
        client = personas.client(user)
        page = client.get(USAGE)
        assert page.status_code == 200
        html = page.content.decode()
        assert _ids_on_page(html) == [request_id]
        assert "production" in html
        assert MODEL in html
        detail = client.get(f"{USAGE}requests/{request_id}/")
        assert detail.status_code == 200
        text = detail.content.decode()
        assert "Name three rivers in Europe" in text
        assert escape(call.json()["choices"][0]["message"]["content"]) in text
        assert f'id="request-charged" data-micros="{cost}"' in text

    outsider = personas.client(personas.outsider)
    assert request_id not in outsider.get(USAGE).content.decode()
    assert outsider.get(f"{USAGE}requests/{request_id}/").status_code == 404


def test_dashboard_filters(personas: Personas) -> None:
    key, _ = _issue(personas.org, personas.owner)
    batch, _ = _issue(personas.org, personas.owner, name="batch")
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    ok = _row(personas.org, api_key=key, created_at=day)
    failed = _row(
        personas.org,
        api_key=key,
        status=RequestLog.Status.ERROR,
        http_status=502,
        created_at=day - timedelta(days=1),
    )
    claude = _row(personas.org, api_key=batch, model="claude-haiku-4.5", created_at=day)
    byok = _row(personas.org, api_key=batch, byok=True, created_at=day + timedelta(days=1))
    client = personas.client(personas.member)

    def ids(**params: str) -> set[str]:
        response = client.get(USAGE, params)
        assert response.status_code == 200
        return set(_ids_on_page(response.content.decode()))

    assert ids() == {ok.request_id, failed.request_id, claude.request_id, byok.request_id}
    assert ids(model="claude-haiku-4.5") == {claude.request_id}
    assert ids(api_key=batch.prefix) == {claude.request_id, byok.request_id}
    assert ids(status="error") == {failed.request_id}
    assert ids(byok="yes") == {byok.request_id}
    assert ids(byok="no") == {ok.request_id, failed.request_id, claude.request_id}
    assert ids(date_from="2025-03-10", date_to="2025-03-10") == {ok.request_id, claude.request_id}
    assert ids(status="ok", api_key=key.prefix) == {ok.request_id}
    assert (
        "No requests match these filters"
        in client.get(USAGE, {"date_from": "2030-01-01"}).content.decode()
    )


def test_dashboard_refuses_bad_filters(personas: Personas) -> None:
    _, _ = _issue(personas.org, personas.owner)
    _row(personas.org)
    globex_key, _ = _issue(personas.other_org, personas.outsider)
    client = personas.client(personas.owner)
    for params in (
        {"date_from": "2025-03-10", "date_to": "2025-03-01"},
        {"model": "no-such-model"},
        {"api_key": globex_key.prefix},  # another org's key is not a choice here
        {"date_from": "soon"},
    ):
        response = client.get(USAGE, params)
        assert response.status_code == 400, params
        html = response.content.decode()
        assert 'class="field-error"' in html
        assert _ids_on_page(html) == []
    csv_response = client.get(f"{USAGE}requests.csv", {"date_from": "soon"})
    assert csv_response.status_code == 302
    assert csv_response["Location"] == f"{USAGE}?date_from=soon"


def test_dashboard_pagination_walks_every_row_once(personas: Personas) -> None:
    now = timezone.now()
    rows = [_row(personas.org, created_at=now - timedelta(seconds=i // 3)) for i in range(60)]
    client = personas.client(personas.owner)
    first = client.get(USAGE, {"status": "ok"}).content.decode()
    first_ids = _ids_on_page(first)
    assert len(first_ids) == 50
    assert 'hx-trigger="every 5s' in first  # only the newest page follows new rows
    older = re.search(r'href="\?([^"]*before=[^"]+)" rel="next"', first)
    assert older is not None
    query = older[1].replace("&amp;", "&")
    assert "status=ok" in query
    second = client.get(f"{USAGE}?{query}").content.decode()
    second_ids = _ids_on_page(second)
    assert len(second_ids) == 10
    assert 'rel="next"' not in second
    assert "hx-trigger" not in second
    expected = [
        r.request_id for r in sorted(rows, key=lambda r: (r.created_at, r.pk), reverse=True)
    ]
    assert first_ids + second_ids == expected


def test_dashboard_live_refresh_returns_only_the_table(personas: Personas) -> None:
    client = personas.client(personas.member)
    _row(personas.org, request_id="req_before_poll")
    html = client.get(USAGE).content.decode()
    assert "req_before_poll" in html
    _row(
        personas.org, request_id="req_after_poll", created_at=timezone.now() + timedelta(seconds=1)
    )
    poll = client.get(USAGE, HTTP_HX_REQUEST="true")
    assert poll.status_code == 200
    fragment = poll.content.decode()
    assert fragment.lstrip().startswith('<div id="request-log"')
    assert "<html" not in fragment
    assert _ids_on_page(fragment) == ["req_after_poll", "req_before_poll"]


def test_zero_retention_rows_show_no_text(personas: Personas) -> None:
    log = _row(personas.org, prompt=None, completion="", request_id="req_zero_ret")
    client = personas.client(personas.member)
    detail = client.get(f"{USAGE}requests/{log.request_id}/").content.decode()
    assert "Not stored (zero retention)" in detail
    assert 'id="completion"' not in detail
    assert "not stored" in client.get(USAGE).content.decode()


def test_outsider_gets_404_and_anonymous_goes_to_login(personas: Personas) -> None:
    log = _row(personas.org)
    detail = f"{USAGE}requests/{log.request_id}/"
    outsider = personas.client(personas.outsider)
    assert outsider.get(detail).status_code == 404
    assert outsider.get(f"{USAGE}requests/req_nothing_here/").status_code == 404
    assert log.request_id not in outsider.get(USAGE).content.decode()
    assert _csv(outsider.get(f"{USAGE}requests.csv")) == []
    for path in (USAGE, detail, f"{USAGE}requests.csv"):
        response = Client().get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/")


def test_html_in_logged_texts_is_escaped(personas: Personas) -> None:
    key, _ = _issue(personas.org, personas.owner, name="<b>bold key</b>")
    log = _row(
        personas.org,
        api_key=key,
        prompt=[{"role": "user", "content": XSS_PROMPT}],
        completion='<img src=x onerror="alert(2)">',
        route={"reason": "</code><script>alert(3)</script>"},
    )
    client = personas.client(personas.member)
    for path in (USAGE, f"{USAGE}requests/{log.request_id}/"):
        html = client.get(path).content.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        assert "<script>alert" not in html, path
        assert "<b>bold key</b>" not in html, path
        assert "&lt;b&gt;bold key&lt;/b&gt;" in html, path
    detail = client.get(f"{USAGE}requests/{log.request_id}/").content.decode()
    assert "<img src=x" not in detail
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in detail


def test_empty_state_explains_the_first_call(personas: Personas) -> None:
    html = personas.client(personas.member).get(USAGE).content.decode()
    assert "No requests yet" in html
    assert "http://testserver/v1/chat/completions" in html
    assert "Authorization: Bearer $LLMWISE_API_KEY" in html
    assert 'href="/dashboard/keys/"' in html


# --- CSV --------------------------------------------------------------------------------------
def test_csv_exports_the_filtered_rows_without_formulas(personas: Personas) -> None:
    key, _ = _issue(personas.org, personas.owner, name="=cmd|' /C calc'!A0")
    formula = _row(
        personas.org,
        api_key=key,
        request_id="-2+3-client-id",
        prompt=[{"role": "user", "content": '=HYPERLINK("http://evil.test")'}],
        completion="=1+1",
    )
    zero = _row(personas.org, api_key=key, prompt=None, completion="")
    _row(personas.org, status=RequestLog.Status.ERROR, http_status=500)
    byok = _row(personas.org, api_key=key, byok=True, cost_micros=999)

    client = personas.client(personas.member)
    response = client.get(f"{USAGE}requests.csv", {"status": "ok"})
    assert response["Content-Disposition"] == 'attachment; filename="requests-acme.csv"'
    rows = _csv(response)
    assert len(rows) == 3
    by_id = {row["request_id"].lstrip("'"): row for row in rows}
    row = by_id[formula.request_id]
    assert row["request_id"] == "'-2+3-client-id"
    assert row["api_key_name"] == "'=cmd|' /C calc'!A0"
    assert row["completion"] == "'=1+1"
    assert row["prompt"].startswith("[")
    assert "=HYPERLINK" in row["prompt"]
    assert (row["status"], row["model"], row["zero_retention"]) == ("ok", MODEL, "false")
    assert (row["cost_micros"], row["cost_usd"], row["charged_micros"]) == (
        "150",
        "0.000150",
        "150",
    )

    row = by_id[zero.request_id]
    assert (row["zero_retention"], row["prompt"], row["completion"]) == ("true", "", "")
    row = by_id[byok.request_id]
    assert (row["byok"], row["cost_micros"], row["charged_micros"]) == ("true", "999", "0")
    for row in by_id.values():
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell
