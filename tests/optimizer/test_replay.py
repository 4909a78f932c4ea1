"""The replay lab end to end: sample, estimate, confirm (402 when short), billed calls, judge."""

from __future__ import annotations

import base64
import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.optimizer.models import Recommendation, ReplayRun
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Wallet
from tests.conftest import Personas

from .history import CHEAP, CURRENT, rows

pytestmark = pytest.mark.django_db

PAGE = "/dashboard/recommendations/"


def _marker(reply: dict[str, Any]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(reply).encode()).decode()
    return f"[[sandbox:reply:{encoded}]]"


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url


@pytest.fixture
def primary(personas: Personas, catalog: None) -> Recommendation:
    """Classification on gpt-4.1 (text kept; the sandbox answers with a judge verdict of "tie"),
    the same on a zero-retention key (no text), and gpt-4o-mini doing it cheaper."""
    key = account_services.api_key_create(org=personas.org, name="app", created_by=None).api_key
    private = account_services.api_key_create(
        org=personas.org, name="private", created_by=None, zero_retention=True
    ).api_key
    verdict = _marker({"winner": "tie", "reason": "Both give the same label."})
    rows(personas.org, count=40, model=CURRENT, api_key=key, prompt=f"Spam or not? {verdict}")
    rows(personas.org, count=40, model=CURRENT, api_key=private)
    rows(personas.org, count=40, model=CHEAP, api_key=key)
    call_command("run_optimizer", "--org", personas.org.slug, stdout=StringIO())
    return Recommendation.objects.get(
        organization=personas.org, kind="primary_model", target="classification", status="new"
    )


def _fund(personas: Personas, micros: int) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    if micros:
        wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="test funds")
    wallet.refresh_from_db()
    return wallet


def _draft(personas: Personas, rec: Recommendation, size: int = 5) -> ReplayRun:
    client = personas.client(personas.admin)
    response = client.post(f"{PAGE}replays/", {"recommendation": rec.pk, "sample_size": size})
    assert response.status_code == 302, response.content
    run = ReplayRun.objects.get(organization=personas.org)
    page = client.get(response.url).content.decode()
    assert run.status == "draft"
    assert run.estimate_micros > 0
    assert 'data-kpi="estimate"' in page
    assert "Confirm and run" in page
    return run


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def test_replay_is_billed_like_calls_and_judged(
    personas: Personas, primary: Recommendation, django_capture_on_commit_callbacks: Any
) -> None:
    wallet = _fund(personas, 5_000_000)
    run = _draft(personas, primary)
    # Never a zero-retention row, never another org's, never the candidate's own.
    sampled = RequestLog.objects.filter(pk__in=run.sample)
    assert sampled.count() == 5
    assert all(log.prompt is not None and log.model == CURRENT for log in sampled)
    assert set(sampled.values_list("organization_id", flat=True)) == {personas.org.pk}
    assert RequestLog.objects.filter(parent_request_id=run.request_id).count() == 0  # not yet

    client = personas.client(personas.admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{PAGE}replays/{run.pk}/confirm/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "done", run.error
    assert (run.completed, run.failed) == (5, 0)

    calls = RequestLog.objects.filter(organization=personas.org, parent_request_id=run.request_id)
    assert (
        sorted(calls.values_list("endpoint", flat=True))
        == ["optimizer.judge"] * 5 + ["optimizer.replay"] * 5
    )
    assert set(calls.filter(endpoint="optimizer.replay").values_list("model", flat=True)) == {CHEAP}
    spent = sum(calls.values_list("cost_micros", flat=True))
    assert spent > 0
    assert run.actual_cost_micros == spent
    charged = -sum(
        LedgerEntry.objects.filter(wallet=wallet, kind="charge").values_list(
            "amount_micros", flat=True
        )
    )
    assert charged == spent
    wallet.refresh_from_db()
    assert wallet.balance_micros == 5_000_000 - spent
    _audit_ok()

    summary = run.results["summary"]
    assert summary["tie"] == 5
    assert summary["judged"] == 5
    assert summary["not_worse_rate"] == 1.0
    assert summary["candidate_cost_micros"] < summary["original_cost_micros"]
    assert all(item["judge_request_id"] for item in run.results["items"])
    assert "prompt" not in json.dumps(run.results)  # metadata only, never texts
    progress = client.get(f"{PAGE}replays/{run.pk}/?part=progress", HTTP_HX_REQUEST="true")
    assert 'data-kpi="tie">5<' in progress.content.decode()

    # The verdicts now verify the recommendation: same advice, higher confidence.
    before = primary.confidence
    call_command("run_optimizer", "--org", personas.org.slug, stdout=StringIO())
    primary.refresh_from_db()
    assert primary.status == "new"
    assert primary.evidence["quality"] == "verified"
    assert primary.confidence > before


def test_confirmation_refuses_with_402_when_credit_is_short(
    personas: Personas, primary: Recommendation, django_capture_on_commit_callbacks: Any
) -> None:
    _fund(personas, 10)
    run = _draft(personas, primary)
    with django_capture_on_commit_callbacks(execute=True):
        response = personas.client(personas.owner).post(f"{PAGE}replays/{run.pk}/confirm/")
    assert response.status_code == 402
    assert 'data-error="insufficient_credit"' in response.content.decode()
    run.refresh_from_db()
    assert run.status == "draft"
    assert not RequestLog.objects.filter(parent_request_id=run.request_id).exists()
    assert not LedgerEntry.objects.filter(kind="charge").exists()
    _audit_ok()


def test_replay_personas(
    personas: Personas, primary: Recommendation, django_capture_on_commit_callbacks: Any
) -> None:
    _fund(personas, 5_000_000)
    run = _draft(personas, primary, size=2)
    member = personas.client(personas.member)
    assert member.get(f"{PAGE}replays/{run.pk}/").status_code == 200
    assert member.post(f"{PAGE}replays/{run.pk}/confirm/").status_code == 403
    outsider = personas.client(personas.outsider)
    assert outsider.get(f"{PAGE}replays/{run.pk}/").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert outsider.post(f"{PAGE}replays/{run.pk}/confirm/").status_code == 404
    assert (
        outsider.post(
            f"{PAGE}replays/", {"recommendation": primary.pk, "sample_size": 2}
        ).status_code
        == 404
    )
    run.refresh_from_db()
    assert run.status == "draft"
    personas.client(personas.admin).post(f"{PAGE}replays/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert not RequestLog.objects.filter(parent_request_id=run.request_id).exists()


def test_zero_retention_org_has_nothing_to_replay(personas: Personas, catalog: None) -> None:
    personas.org.zero_retention = True
    personas.org.save()
    rows(personas.org, count=5, model=CURRENT)
    response = personas.client(personas.admin).post(
        f"{PAGE}replays/", {"policy": "rules: []\n", "sample_size": 3}
    )
    assert response.status_code == 302
    assert not ReplayRun.objects.exists()


def test_draft_policy_replay(
    personas: Personas, catalog: None, django_capture_on_commit_callbacks: Any
) -> None:
    _fund(personas, 5_000_000)
    rows(personas.org, count=6, model=CURRENT)
    rows(personas.org, count=6, model=CURRENT, category="summarization")
    policy = (
        "applies_to: all\nrules:\n  - when: {category: [classification]}\n    model: gpt-4o-mini\n"
    )
    client = personas.client(personas.admin)
    response = client.post(f"{PAGE}replays/", {"policy": policy, "sample_size": 12})
    assert response.status_code == 302
    run = ReplayRun.objects.get(organization=personas.org)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"{PAGE}replays/{run.pk}/confirm/")
    run.refresh_from_db()
    assert run.status == "done"
    assert run.completed == 12
    # The sandbox's echo is no JSON verdict: counted as unjudged, never guessed.
    assert run.results["summary"]["unjudged"] == 12
    candidates = {item["candidate_model"] for item in run.results["items"]}
    assert CHEAP in candidates
    _audit_ok()
