"""The API and the dashboard pages: personas, tenancy, apply / revert / dismiss."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import AuditEvent
from apps.gateway.models import RoutingPolicy
from apps.optimizer.models import OptimizerSettings, Recommendation
from tests.conftest import Personas

from .conftest import Keys
from .history import CHEAP, CURRENT

pytestmark = pytest.mark.django_db

API = "/api/v1/recommendations"
PAGE = "/dashboard/recommendations/"
Kind = Recommendation.Kind


@pytest.fixture
def analysed(personas: Personas, history: Keys) -> Keys:
    call_command("run_optimizer", "--org", personas.org.slug, stdout=StringIO())
    return history


def _rec(personas: Personas, kind: str, target: str = "classification") -> Recommendation:
    return Recommendation.objects.get(
        organization=personas.org, kind=kind, target=target, status="new"
    )


def _get(secret: str, **params: str):
    return Client().get(API, params, HTTP_AUTHORIZATION=f"Bearer {secret}")


# --- API ----------------------------------------------------------------------------------------
def test_api_lists_the_orgs_recommendations(personas: Personas, analysed: Keys) -> None:
    response = _get(analysed.main_secret)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "list"
    kinds = {(r["kind"], r["target"]) for r in body["data"]}
    assert (Kind.PRIMARY_MODEL, "classification") in kinds
    primary = next(r for r in body["data"] if r["kind"] == Kind.PRIMARY_MODEL)
    assert primary["payload"]["model"] == CHEAP
    assert primary["estimated_monthly_saving_micros"] > 0
    assert primary["evidence"]["models"]
    savings = [r["estimated_monthly_saving_micros"] for r in body["data"]]
    assert savings == sorted(savings, reverse=True)
    only = _get(analysed.main_secret, kind=Kind.CACHE_OPPORTUNITY).json()["data"]
    assert [r["kind"] for r in only] == [Kind.CACHE_OPPORTUNITY]


def test_api_bad_input_is_a_400_in_our_envelope(personas: Personas, analysed: Keys) -> None:
    response = _get(analysed.main_secret, status="maybe")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "status"
    assert error["type"] == "invalid_request_error"


def test_api_shows_only_the_calling_orgs(personas: Personas, analysed: Keys) -> None:
    other = account_services.api_key_create(
        org=personas.other_org, name="theirs", created_by=personas.outsider
    ).secret
    response = _get(other)
    assert response.status_code == 200
    assert response.json()["data"] == []


def test_api_needs_a_key(db: None) -> None:
    response = Client().get(API)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- pages --------------------------------------------------------------------------------------
def test_page_lists_with_savings_and_chart_data(personas: Personas, analysed: Keys) -> None:
    response = personas.client(personas.owner).get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    primary = _rec(personas, Kind.PRIMARY_MODEL)
    assert primary.title in html
    assert 'id="recommendations-data"' in html
    assert f'id="chart-rec-{primary.pk}"' in html
    assert "Run now" in html
    assert "Apply" in html
    assert "<script>" not in html  # charts read json_script data; no inline JS


def test_member_reads_but_cannot_act(personas: Personas, analysed: Keys) -> None:
    client = personas.client(personas.member)
    rec = _rec(personas, Kind.PRIMARY_MODEL)
    page = client.get(PAGE).content.decode()
    assert rec.title in page
    assert "Run now" not in page
    assert ">Apply<" not in page
    assert client.get(f"{PAGE}{rec.pk}/").status_code == 200
    for action in ("apply", "dismiss"):
        assert client.post(f"{PAGE}{rec.pk}/{action}/").status_code == 403
    assert client.post(f"{PAGE}run/").status_code == 403
    rec.refresh_from_db()
    assert rec.status == "new"
    assert not RoutingPolicy.objects.filter(organization=personas.org).exists()


def test_outsider_gets_404(personas: Personas, analysed: Keys) -> None:
    client = personas.client(personas.outsider)
    rec = _rec(personas, Kind.PRIMARY_MODEL)
    assert client.get(f"{PAGE}{rec.pk}/").status_code == 404
    assert client.post(f"{PAGE}{rec.pk}/apply/").status_code == 404
    assert client.post(f"{PAGE}{rec.pk}/dismiss/").status_code == 404
    assert rec.title not in client.get(PAGE).content.decode()
    rec.refresh_from_db()
    assert rec.status == "new"


def test_apply_creates_a_policy_version_and_revert_restores(
    personas: Personas, analysed: Keys
) -> None:
    client = personas.client(personas.admin)
    rec = _rec(personas, Kind.PRIMARY_MODEL)
    detail = client.get(f"{PAGE}{rec.pk}/").content.decode()
    assert 'data-doc="after"' in detail
    assert "a new default policy" in detail

    response = client.post(f"{PAGE}{rec.pk}/apply/")
    assert response.status_code == 302
    rec.refresh_from_db()
    assert rec.status == "applied"
    policy = RoutingPolicy.objects.get(organization=personas.org, is_default=True)
    version = policy.current_version
    assert rec.applied_policy_version == version
    rule = version.document["rules"][0]
    assert rule["model"] == CHEAP
    assert rule["when"] == {"category": ["classification"]}
    assert AuditEvent.objects.filter(action="routing_policy.create").exists()
    assert AuditEvent.objects.filter(action="optimizer.recommendation.apply").exists()

    # The fallback-chain advice lands as a new version of the same (now default) policy.
    chain = _rec(personas, Kind.FALLBACK_CHAIN)
    assert client.post(f"{PAGE}{chain.pk}/apply/").status_code == 302
    policy.refresh_from_db()
    assert policy.current_version.number == 2
    rules = policy.current_version.document["rules"]
    assert len(rules) == 1  # the optimizer's own rule for the category was replaced
    assert rules[0]["model"] == CURRENT
    assert rules[0]["fallbacks"] == [CHEAP]
    page = client.get(f"{PAGE}{chain.pk}/").content.decode()
    assert 'data-doc="before"' in page
    assert 'data-doc="after"' in page

    # Revert the second: a rollback to version 1, as a new version 3.
    assert client.post(f"{PAGE}{chain.pk}/revert/").status_code == 302
    policy.refresh_from_db()
    assert policy.current_version.number == 3
    assert policy.current_version.document == version.document
    chain.refresh_from_db()
    assert chain.status == "reverted"
    # The first one cannot be reverted any more: its version is no longer current.
    client.post(f"{PAGE}{rec.pk}/revert/")
    rec.refresh_from_db()
    assert rec.status == "applied"


def test_revert_of_a_created_policy_deletes_it(personas: Personas, analysed: Keys) -> None:
    client = personas.client(personas.owner)
    rec = _rec(personas, Kind.ROUTING_POLICY, target="default")
    client.post(f"{PAGE}{rec.pk}/apply/")
    assert RoutingPolicy.objects.filter(organization=personas.org).count() == 1
    client.post(f"{PAGE}{rec.pk}/revert/")
    assert not RoutingPolicy.objects.filter(organization=personas.org).exists()
    assert AuditEvent.objects.filter(action="routing_policy.delete").exists()


def test_flags_cannot_be_applied_only_dismissed(personas: Personas, analysed: Keys) -> None:
    client = personas.client(personas.admin)
    flag = _rec(personas, Kind.CACHE_OPPORTUNITY, target=CHEAP)
    client.post(f"{PAGE}{flag.pk}/apply/")
    flag.refresh_from_db()
    assert flag.status == "new"
    assert not RoutingPolicy.objects.filter(organization=personas.org).exists()
    client.post(f"{PAGE}{flag.pk}/dismiss/")
    flag.refresh_from_db()
    assert flag.status == "dismissed"
    assert flag.status_changed_by == personas.admin


def test_run_now_and_settings(
    personas: Personas, history: Keys, django_capture_on_commit_callbacks
) -> None:
    client = personas.client(personas.admin)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"{PAGE}run/").status_code == 302
    assert Recommendation.objects.filter(organization=personas.org, status="new").exists()
    response = client.post(
        f"{PAGE}settings/",
        {
            "window_days": 7,
            "min_requests": 10,
            "max_error_rate": 0.1,
            "max_p95_latency_ms": 5000,
            "min_quality": 0.7,
            "min_judged": 3,
            "runaway_spend_ratio": 3,
            "runaway_spend_min_micros": 2_000_000,
            "cache_min_duplicates": 5,
            "digest_enabled": "on",
        },
    )
    assert response.status_code == 302
    saved = OptimizerSettings.objects.get(organization=personas.org)
    assert saved.window_days == 7
    assert saved.digest_enabled
    bad = client.post(f"{PAGE}settings/", {"window_days": 0, "min_requests": 1})
    assert bad.status_code == 302
    saved.refresh_from_db()
    assert saved.window_days == 7
