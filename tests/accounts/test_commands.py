"""Operator commands: create_org and create_api_key."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from apps.accounts.models import ApiKey, Membership, Organization, Role, User

pytestmark = pytest.mark.django_db


def _run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_org_creates_user_and_is_idempotent() -> None:
    out, _ = _run("create_org", "--slug", "acme", "--owner", "Boss@Acme.test")
    assert "Created organization acme" in out
    user = User.objects.get(email="boss@acme.test")
    assert not user.has_usable_password()  # nothing secret printed; they reset it
    assert Membership.objects.get(user=user, organization__slug="acme").role == Role.OWNER

    out, _ = _run("create_org", "--slug", "acme", "--owner", "boss@acme.test")
    assert "already exists" in out
    assert Organization.objects.filter(slug="acme").count() == 1


def test_create_org_errors() -> None:
    _run("create_org", "--slug", "acme", "--owner", "boss@acme.test")
    with pytest.raises(CommandError, match="not its owner"):
        _run("create_org", "--slug", "acme", "--owner", "someone@else.test")
    with pytest.raises(CommandError, match="email"):
        _run("create_org", "--slug", "new", "--owner", "nobody")
    with pytest.raises(CommandError, match="slug"):
        _run("create_org", "--slug", "Bad Slug!", "--owner", "x@x.test")
    assert not Organization.objects.filter(slug="new").exists()
    assert not User.objects.filter(email="x@x.test").exists()  # nothing half-created


def test_create_api_key_prints_secret_last_and_it_works() -> None:
    _run("create_org", "--slug", "acme", "--owner", "boss@acme.test")
    out, err = _run("create_api_key", "--org", "acme", "--name", "ci")
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("lw-")
    assert secret not in err
    key = ApiKey.objects.get(organization__slug="acme")
    assert key.name == "ci"
    assert key.created_by is None
    response = Client().get("/api/v1/key", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    assert response.json()["organization"] == "acme"


def test_create_api_key_unknown_org() -> None:
    with pytest.raises(CommandError, match="No organization"):
        _run("create_api_key", "--org", "ghost", "--name", "x")
    assert not ApiKey.objects.exists()
