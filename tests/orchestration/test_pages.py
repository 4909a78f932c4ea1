"""The dashboard playground and run pages: members see them, other tenants get 404."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

from .conftest import MODELS, messages, post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]


def test_playground_renders_for_a_member_with_its_tabs_and_script(personas: Personas) -> None:
    response = personas.client(personas.member).get(reverse("dashboard:playground"))
    assert response.status_code == 200
    html = response.content.decode()
    for tab in ("Chat", "Compare", "Blend", "Judge"):
        assert f'data-mode="{tab.lower()}"' in html
    assert "js/playground.js" in html
    assert 'data-socket-path="/ws/v1/orchestrate"' in html
    assert 'value="claude-haiku-4.5"' in html
    assert "Coming soon" not in html


def test_playground_needs_a_login(client: object) -> None:
    from django.test import Client

    response = Client().get(reverse("dashboard:playground"))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_run_page_lists_the_children_and_request_detail_links_back(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    run_id = post(
        live_gateway, "compare", secret, {"models": MODELS, "messages": messages()}
    ).json()["id"]
    member = personas.client(personas.member)
    page = member.get(reverse("dashboard:orchestration_run", args=[run_id]))
    assert page.status_code == 200
    html = page.content.decode()
    for index in range(3):
        assert f"{run_id}.{index}" in html
    playground = member.get(reverse("dashboard:playground")).content.decode()
    assert reverse("dashboard:orchestration_run", args=[run_id]) in playground
    child = member.get(reverse("dashboard:usage_request", args=[f"{run_id}.0"]))
    assert reverse("dashboard:orchestration_run", args=[run_id]) in child.content.decode()


def test_another_tenants_run_is_not_found(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    run_id = post(
        live_gateway, "compare", secret, {"models": MODELS, "messages": messages()}
    ).json()["id"]
    response = personas.client(personas.outsider).get(
        reverse("dashboard:orchestration_run", args=[run_id])
    )
    assert response.status_code == 404
    assert run_id not in response.content.decode()
    assert (
        run_id
        not in personas.client(personas.outsider)
        .get(reverse("dashboard:playground"))
        .content.decode()
    )


def test_recent_runs_fragment_lists_only_the_orgs_runs(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    url = reverse("dashboard:playground")
    empty = personas.client(personas.member).get(url, {"part": "runs"}).content.decode()
    assert 'id="recent-runs"' in empty
    assert "No Compare, Blend or Judge runs yet." in empty
    run_id = post(
        live_gateway, "compare", secret, {"models": MODELS, "messages": messages()}
    ).json()["id"]
    fragment = personas.client(personas.member).get(url, {"part": "runs"}).content.decode()
    assert "<html" not in fragment  # the section alone, for the page to swap in
    assert reverse("dashboard:orchestration_run", args=[run_id]) in fragment
    assert "Compare" in fragment
    other = personas.client(personas.outsider).get(url, {"part": "runs"}).content.decode()
    assert run_id not in other
    assert "No Compare, Blend or Judge runs yet." in other
