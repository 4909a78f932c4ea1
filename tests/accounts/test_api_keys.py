"""API keys: created once-visible, stored hashed, authenticated by prefix + hash, revocable."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import PLAYGROUND_KEY_NAME, ApiKey, AuditEvent
from apps.gateway.models import ApiKeyPolicyPin
from apps.gateway.policy_services import routing_policy_create
from apps.gateway.principals import dashboard_api_key
from llmwise.errors import ApplicationError, NotFound, NotPermitted
from tests.conftest import Personas

pytestmark = pytest.mark.django_db


def _api(secret: str, **headers: str):
    return Client().get("/api/v1/key", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers)


def test_secret_shape_and_only_hash_is_stored(personas: Personas) -> None:
    issued = services.api_key_create(org=personas.org, name="ci", created_by=personas.admin)
    secret = issued.secret
    assert secret.startswith("lw-")
    assert len(secret) >= 3 + 43  # 32 random bytes, url-safe base64
    row = ApiKey.objects.get(pk=issued.api_key.pk)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(row.__dict__.values())
    assert row.prefix == secret[:12]
    assert AuditEvent.objects.filter(action="api_key.create", organization=personas.org).exists()


def test_key_authenticates_api_and_revocation_takes_effect(personas: Personas) -> None:
    issued = services.api_key_create(
        org=personas.org, name="prod", created_by=personas.owner, allowed_models=["gpt-4.1", " "]
    )
    response = _api(issued.secret)
    assert response.status_code == 200
    assert response.json()["organization"] == personas.org.slug
    assert response.json()["allowed_models"] == ["gpt-4.1"]
    assert response["x-request-id"]

    services.api_key_revoke(org=personas.org, actor=personas.admin, key_id=issued.api_key.pk)
    response = _api(issued.secret)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert error["request_id"] == response["x-request-id"]


@pytest.mark.parametrize(
    "secret",
    ["", "lw-", "sk-notours", "lw-" + "A" * 43, "Bearer-less"],
)
def test_bad_secrets_are_refused(personas: Personas, secret: str) -> None:
    services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    assert _api(secret).status_code == 401


def test_wrong_secret_with_a_real_prefix_is_refused(personas: Personas) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    forged = issued.secret[:12] + "x" * (len(issued.secret) - 12)
    assert _api(forged).status_code == 401


def test_expired_key_is_refused(personas: Personas) -> None:
    issued = services.api_key_create(
        org=personas.org,
        name="short",
        created_by=personas.owner,
        expires_at=timezone.now() + timedelta(days=1),
    )
    ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=timezone.now())
    assert _api(issued.secret).status_code == 401


def test_x_api_key_header_is_accepted(personas: Personas) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    response = Client().get("/api/v1/key", HTTP_X_API_KEY=issued.secret)
    assert response.status_code == 200


def test_client_request_id_is_echoed_but_never_used_as_ours(personas: Personas) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    response = _api(issued.secret, HTTP_X_REQUEST_ID="client-abc-12345")
    assert response["x-client-request-id"] == "client-abc-12345"
    assert response["x-request-id"].startswith("req_")
    assert "x-client-request-id" not in _api(issued.secret, HTTP_X_REQUEST_ID="<bad id>")


def test_last_used_is_written_at_most_once_per_interval(
    personas: Personas, django_assert_num_queries
) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    with override_settings(API_KEY_LAST_USED_INTERVAL=60):
        services.api_key_authenticate(secret=issued.secret)
        first = ApiKey.objects.get(pk=issued.api_key.pk).last_used_at
        assert first is not None
        services.api_key_caches_clear()  # as if another process: lookup, shared cache says no
        with django_assert_num_queries(1):  # the lookup only, no UPDATE
            services.api_key_authenticate(secret=issued.secret)
        assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at == first


def test_members_cannot_create_or_revoke_keys(personas: Personas) -> None:
    with pytest.raises(NotPermitted):
        services.api_key_create(org=personas.org, name="k", created_by=personas.member)
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    with pytest.raises(NotPermitted):
        services.api_key_revoke(org=personas.org, actor=personas.member, key_id=issued.api_key.pk)


def test_outsider_cannot_touch_keys(personas: Personas) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    with pytest.raises(NotFound):
        services.api_key_revoke(org=personas.org, actor=personas.outsider, key_id=issued.api_key.pk)
    with pytest.raises(NotFound):  # their own org, our key id
        services.api_key_revoke(
            org=personas.other_org, actor=personas.outsider, key_id=issued.api_key.pk
        )
    assert ApiKey.objects.get(pk=issued.api_key.pk).revoked_at is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "  "},
        {"name": "k", "rpm_limit": 0},
        {"name": "k", "tpm_limit": -5},
        {"name": "k", "spend_cap_micros": 0},
        {"name": "k", "expires_at": "past"},
    ],
)
def test_invalid_key_input_creates_nothing(personas: Personas, kwargs: dict) -> None:
    if kwargs.get("expires_at") == "past":
        kwargs["expires_at"] = timezone.now() - timedelta(minutes=1)
    with pytest.raises(ApplicationError):
        services.api_key_create(org=personas.org, created_by=personas.owner, **kwargs)
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="api_key.create").exists()


def test_authenticated_keys_are_remembered_briefly(
    personas: Personas, django_assert_num_queries
) -> None:
    issued = services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    assert services.api_key_authenticate(secret=issued.secret) is not None
    with django_assert_num_queries(0):  # no lookup, no last-used write
        assert services.api_key_authenticate(secret=issued.secret) is not None
    # Expiry is checked on every call, cached or not.
    ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=timezone.now())
    cached = services._key_cache[issued.api_key.secret_hash][1]
    cached.expires_at = timezone.now()
    assert services.api_key_authenticate(secret=issued.secret) is None


@pytest.mark.parametrize(
    ("org_zero", "key_zero", "retains"),
    [
        (False, None, True),
        (True, None, False),
        (False, True, False),
        (True, False, True),
    ],
)
def test_key_retention_overrides_the_organization(
    personas: Personas, org_zero: bool, key_zero: bool | None, retains: bool
) -> None:
    personas.org.zero_retention = org_zero
    personas.org.save()
    issued = services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, zero_retention=key_zero
    )
    assert ApiKey.objects.get(pk=issued.api_key.pk).retains_text is retains


# --- the internal playground key -----------------------------------------------------------------
def test_the_playground_keys_name_is_reserved(personas: Personas) -> None:
    owner = personas.client(personas.owner)
    for name in ("Playground", " playground "):
        response = owner.post("/dashboard/keys/", {"name": name})
        assert response.status_code == 400
        assert "names the dashboard" in response.content.decode()
    assert not ApiKey.objects.filter(organization=personas.org).exists()
    assert owner.post("/dashboard/keys/", {"name": "Playground tests"}).status_code == 200


def test_customers_cannot_reach_the_internal_key(personas: Personas) -> None:
    """Not revocable, not pinnable, not offered anywhere keys are chosen; the platform itself
    (closing the organization) can still revoke it."""
    internal = dashboard_api_key(org=personas.org)
    assert (internal.internal, internal.name) == (True, PLAYGROUND_KEY_NAME)
    policy = routing_policy_create(
        org=personas.org,
        actor=personas.owner,
        name="cheap",
        document={"allowed_providers": ["openai"]},
    )
    owner = personas.client(personas.owner)
    assert owner.post(f"/dashboard/keys/{internal.pk}/revoke/").status_code == 404
    pin = owner.post(
        f"/dashboard/routing/policies/{policy.pk}/pins/", {"api_key": str(internal.pk)}
    )
    assert pin.status_code == 404
    assert not ApiKeyPolicyPin.objects.exists()
    for page in ("/dashboard/keys/", f"/dashboard/routing/policies/{policy.pk}/"):
        assert internal.prefix not in owner.get(page).content.decode(), page
    dry_run = owner.post(
        "/dashboard/routing/policies/dry-run/",
        {"prompt": "hi", "model": "auto", "api_key": str(internal.pk), "max_tokens": 10},
    )
    assert dry_run.status_code == 400  # not a choice
    internal.refresh_from_db()
    assert internal.revoked_at is None
    with pytest.raises(NotFound):
        services.api_key_revoke(org=personas.org, actor=personas.owner, key_id=internal.pk)
    services.api_key_revoke(org=personas.org, actor=None, key_id=internal.pk)
    internal.refresh_from_db()
    assert internal.revoked_at is not None
    # A revoked (or expired) internal key is replaced on the next dashboard call.
    assert dashboard_api_key(org=personas.org).pk != internal.pk


def test_only_the_platform_makes_internal_keys(personas: Personas) -> None:
    with pytest.raises(NotPermitted):
        services.api_key_create(
            org=personas.org, name="sneaky", created_by=personas.owner, internal=True
        )
    assert not ApiKey.objects.filter(organization=personas.org).exists()
