"""POST /api/v1/compare over real HTTP against the sandbox: concurrency, partial and total
failure, streaming, billing through one fan-out hold, cancellation, bad input, tenancy."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.orchestration.models import OrchestrationRun
from apps.wallet.models import LedgerEntry, Reservation
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway

from .conftest import (
    FUNDS,
    MODELS,
    audit_ok,
    messages,
    post,
    sse_events,
    wait_for,
    wallet_of,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]


def _compare(**changes: Any) -> dict[str, Any]:
    return {"models": MODELS, "messages": messages(), "max_tokens": 60, **changes}


def test_compare_answers_every_model_and_bills_each_child_through_one_hold(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = post(live_gateway, "compare", secret, _compare())
    assert response.status_code == 200, response.text
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert (body["id"], body["mode"], body["object"]) == (
        request_id,
        "compare",
        "orchestration.compare",
    )
    results = body["results"]
    assert [r["model"] for r in results] == MODELS
    for result in results:
        assert result["error"] is None
        assert result["content"].startswith("Sandbox answer from")
        assert result["usage"]["completion_tokens"] > 0
        assert result["cost"]["micros"] > 0
        assert 0 <= result["ttft_ms"] <= result["latency_ms"]
    spent = sum(r["cost"]["micros"] for r in results)
    assert body["totals"]["cost"]["micros"] == spent
    assert body["totals"]["calls"] == 3

    # Children logged under the parent; each settled on its own hold carved from the parent.
    logs = RequestLog.objects.filter(parent_request_id=request_id).order_by("request_id")
    assert [log.model for log in logs] == MODELS
    assert {log.endpoint for log in logs} == {"api.compare"}
    assert sorted(log.cost_micros for log in logs) == sorted(r["cost"]["micros"] for r in results)
    parent = Reservation.objects.get(request_id=request_id)
    assert parent.status == Reservation.Status.RELEASED
    children = Reservation.objects.filter(request_id__startswith=f"{request_id}.")
    assert {c.status for c in children} == {Reservation.Status.SETTLED}
    run = OrchestrationRun.objects.get(request_id=request_id)
    assert (run.status, run.mode, run.cost_micros, run.calls) == ("ok", "compare", spent, 3)
    # The single hold was exactly the three worst cases, each carved out by its call.
    assert run.reserved_micros == sum(c.amount_micros for c in children) > spent
    wallet = wallet_of(personas)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - spent, 0)
    assert LedgerEntry.objects.filter(kind="charge").count() == 3
    audit_ok()


def test_models_run_concurrently_total_time_is_the_slowest_not_the_sum(
    secret: str, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    delays = {"openai": 300, "anthropic": 500, "mistral": 700}
    for provider, latency in delays.items():
        faults.set(provider=provider, fault="none", latency_ms=latency)
    started = time.perf_counter()
    response = post(live_gateway, "compare", secret, _compare())
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    assert all(r["error"] is None for r in response.json()["results"])
    ttfts = {r["model"]: r["ttft_ms"] for r in response.json()["results"]}
    assert ttfts["mistral-small"] >= 700 > ttfts["gpt-4o-mini"] >= 300
    assert 700 <= elapsed_ms < sum(delays.values()) * 0.8


def test_one_failing_model_does_not_fail_the_others_and_costs_nothing(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="anthropic", fault="http_400")
    response = post(live_gateway, "compare", secret, _compare())
    assert response.status_code == 200
    results = {r["model"]: r for r in response.json()["results"]}
    failed = results["claude-haiku-4.5"]
    assert failed["error"]["code"]
    assert failed["content"] == ""
    assert failed["cost"]["micros"] == 0
    assert results["gpt-4o-mini"]["error"] is None
    assert results["mistral-small"]["error"] is None
    run = OrchestrationRun.objects.get(request_id=response.json()["id"])
    assert (run.status, run.failed_calls) == ("partial", 1)
    spent = sum(r["cost"]["micros"] for r in results.values())
    assert wallet_of(personas).balance_micros == FUNDS - spent
    assert wallet_of(personas).reserved_micros == 0
    audit_ok()


def test_all_models_failing_is_a_502_and_charges_nothing(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="*", fault="http_400")
    response = post(live_gateway, "compare", secret, _compare())
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "all_models_failed"
    assert all(model in error["message"] for model in MODELS)
    run = OrchestrationRun.objects.get(request_id=response.headers["x-request-id"])
    assert (run.status, run.error_code, run.failed_calls) == ("error", "all_models_failed", 3)
    wallet = wallet_of(personas)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    audit_ok()


def test_stream_interleaves_tagged_deltas_then_model_done_then_done(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="*", fault="none", chunk_delay_ms=20)
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/api/v1/compare",
        headers={"Authorization": f"Bearer {secret}"},
        json=_compare(stream=True),
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    names = [name for name, _ in events]
    assert names[0] == "run"
    assert names[-1] == "done"
    assert names.count("model_done") == 3
    deltas = [data for name, data in events if name == "delta"]
    # Interleaved: the models' deltas are mixed, not one model after the other.
    order = [d["model"] for d in deltas]
    first_done = names.index("model_done")
    assert len(set(order[: first_done - 1])) > 1
    done = events[-1][1]
    for result in done["results"]:
        text = "".join(d["text"] for d in deltas if d["model"] == result["model"])
        assert text == result["content"]
    assert wallet_of(personas).balance_micros == FUNDS - done["totals"]["cost"]["micros"]
    audit_ok()


def test_client_disconnect_mid_stream_cancels_the_calls_and_settles_everything(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="*", fault="none", chunk_delay_ms=400)
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/api/v1/compare",
        headers={"Authorization": f"Bearer {secret}"},
        json=_compare(stream=True, max_tokens=400),
        timeout=20,
    ) as response:
        request_id = response.headers["x-request-id"]
        seen = []
        for name, _data in sse_events(response):
            seen.append(name)
            if seen.count("delta") >= 3:
                break
    # Gone long before the models would have finished.
    run = wait_for(
        lambda: OrchestrationRun.objects.filter(
            request_id=request_id, finished_at__isnull=False
        ).first()
    )
    assert run.status == "cancelled"
    logs = wait_for(
        lambda: (
            list(RequestLog.objects.filter(parent_request_id=request_id))
            if RequestLog.objects.filter(parent_request_id=request_id).count() == 3
            else None
        )
    )
    assert 499 in {log.http_status for log in logs} <= {200, 499}
    assert not Reservation.objects.filter(status=Reservation.Status.HELD).exists()
    wallet = wallet_of(personas)
    spent = sum(log.cost_micros for log in logs)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - spent, 0)
    audit_ok()


def test_not_enough_credit_for_the_whole_fan_out_is_a_402_before_anything_is_sent(
    personas: Personas, live_gateway: LiveGateway, sandbox: SandboxServer, secret: str
) -> None:
    # Enough for one call's worst case, not for three.
    from apps.wallet import services as wallet_services

    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=-FUNDS + 300, note="drain")
    before = sandbox.app.chat_calls
    response = post(live_gateway, "compare", secret, _compare(max_tokens=2000))
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credit"
    assert sandbox.app.chat_calls == before
    assert not RequestLog.objects.exists()
    assert not OrchestrationRun.objects.exists()
    assert wallet_of(personas).reserved_micros == 0


@pytest.mark.parametrize(
    ("changes", "status", "code", "param"),
    [
        ({"models": ["gpt-4o-mini"]}, 400, "invalid_request", "models"),
        ({"models": MODELS * 2}, 400, "too_many_models", "models"),
        ({"models": ["gpt-4o-mini", "gpt-4o-mini"]}, 400, "invalid_request", "models"),
        ({"models": ["gpt-4o-mini", "no-such-model"]}, 404, "model_not_found", "models.1"),
        ({"messages": []}, 400, "invalid_request", "messages"),
        ({"max_tokens": 0}, 400, "invalid_request", "max_tokens"),
        ({"model": "gpt-4o-mini"}, 400, "unknown_parameter", "model"),
        ({"models": "gpt-4o-mini"}, 400, "invalid_request", "models"),
    ],
)
def test_bad_input_is_refused_with_nothing_sent_or_charged(
    secret: str,
    personas: Personas,
    live_gateway: LiveGateway,
    sandbox: SandboxServer,
    changes: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    before = sandbox.app.chat_calls
    response = post(live_gateway, "compare", secret, _compare(**changes))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert sandbox.app.chat_calls == before
    assert not OrchestrationRun.objects.exists()
    assert wallet_of(personas).balance_micros == FUNDS


def test_without_a_key_is_a_401(live_gateway: LiveGateway) -> None:
    response = httpx.post(f"{live_gateway.url}/api/v1/compare", json=_compare(), timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_run_detail_lists_children_and_is_404_for_another_tenant(
    secret: str, outsider_secret: str, live_gateway: LiveGateway
) -> None:
    request_id = post(live_gateway, "compare", secret, _compare()).json()["id"]
    mine = httpx.get(
        f"{live_gateway.url}/api/v1/orchestrations/{request_id}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert mine.status_code == 200
    data = mine.json()
    assert (data["mode"], data["status"]) == ("compare", "ok")
    assert sorted(c["model"] for c in data["children"]) == sorted(MODELS)
    theirs = httpx.get(
        f"{live_gateway.url}/api/v1/orchestrations/{request_id}",
        headers={"Authorization": f"Bearer {outsider_secret}"},
        timeout=10,
    )
    assert theirs.status_code == 404
    assert "children" not in theirs.text


def test_concurrency_cap_per_org(
    secret: str, settings: Any, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    settings.ORCHESTRATION_MAX_CONCURRENT_PER_ORG = 1
    faults.set(provider="*", fault="none", latency_ms=600)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, live_gateway, "compare", secret, _compare())
        time.sleep(0.3)
        second = post(live_gateway, "compare", secret, _compare())
        assert first.result().status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "orchestration_concurrency"
    # The slot is free again once the first run ended.
    faults.clear()
    assert post(live_gateway, "compare", secret, _compare()).status_code == 200


def test_zero_retention_stores_no_text_for_parent_or_children(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    personas.org.zero_retention = True
    personas.org.save(update_fields=["zero_retention"])
    canary = "canary-orchestration-7731"
    response = post(live_gateway, "compare", secret, _compare(messages=messages(canary)))
    assert response.status_code == 200
    assert canary in response.json()["results"][0]["content"]
    logs = RequestLog.objects.filter(parent_request_id=response.json()["id"])
    assert logs.count() == 3
    assert all(log.prompt is None and log.completion == "" for log in logs)
    run = OrchestrationRun.objects.get(request_id=response.json()["id"])
    assert canary not in str(
        {f.name: getattr(run, f.name) for f in OrchestrationRun._meta.concrete_fields}
    )
