"""Dashboard pages through HTTP with owner / admin / member / outsider personas."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.accounts import services
from apps.accounts.middleware import SESSION_KEY
from apps.accounts.models import ApiKey, Invitation, Membership, Role
from tests.conftest import Personas

pytestmark = pytest.mark.django_db

PAGES = [
    "overview",
    "playground",
    "api_keys",
    "usage",
    "billing",
    "routing",
    "recommendations",
    "team",
    "settings",
]


@pytest.mark.parametrize("page", PAGES)
def test_every_member_sees_the_pages(personas: Personas, page: str) -> None:
    for user in (personas.owner, personas.admin, personas.member):
        response = personas.client(user).get(reverse(f"dashboard:{page}"))
        assert response.status_code == 200, (page, user)
        assert "Acme" in response.content.decode()


@pytest.mark.parametrize("page", [*PAGES, "audit"])
def test_anonymous_is_sent_to_login(page: str, db: None) -> None:
    response = Client().get(reverse(f"dashboard:{page}"))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_audit_log_is_for_admins(personas: Personas) -> None:
    services.api_key_create(org=personas.org, name="Audited <b>key</b>", created_by=personas.owner)
    page = personas.client(personas.admin).get(reverse("dashboard:audit"))
    assert page.status_code == 200
    assert "api_key.create" in page.content.decode()
    assert "<b>key</b>" not in page.content.decode()  # escaped
    assert personas.client(personas.member).get(reverse("dashboard:audit")).status_code == 403
    # The outsider sees only their own org's audit log.
    outsider_page = personas.client(personas.outsider).get(reverse("dashboard:audit"))
    assert "api_key.create" not in outsider_page.content.decode()


# --- API keys ---------------------------------------------------------------------------------
def test_admin_creates_key_and_sees_secret_once(personas: Personas) -> None:
    client = personas.client(personas.admin)
    response = client.post(
        reverse("dashboard:api_keys"),
        {
            "name": "backend",
            "allowed_models": "gpt-4.1, claude-sonnet-4.5",
            "rpm_limit": "60",
            "spend_cap_usd": "12.50",
            "retention": "zero",
        },
    )
    assert response.status_code == 200
    secret = response.context["secret"]
    assert secret.startswith("lw-")
    key = ApiKey.objects.get(organization=personas.org)
    assert key.allowed_models == ["claude-sonnet-4.5", "gpt-4.1"]
    assert key.rpm_limit == 60
    assert key.spend_cap_micros == 12_500_000
    assert key.zero_retention is True
    listing = client.get(reverse("dashboard:api_keys")).content.decode()
    assert key.prefix in listing
    assert secret not in listing


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "k", "rpm_limit": "0"}, "rpm_limit"),
        ({"name": "k", "spend_cap_usd": "-1"}, "spend_cap_usd"),
        ({"name": "k", "expires_on": "2000-01-01"}, "expires_on"),
        ({"name": "k", "tpm_limit": "many"}, "tpm_limit"),
    ],
)
def test_invalid_key_form_shows_errors_and_creates_nothing(
    personas: Personas, data: dict, field: str
) -> None:
    response = personas.client(personas.owner).post(reverse("dashboard:api_keys"), data)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert not ApiKey.objects.exists()


def test_member_cannot_create_or_revoke_keys(personas: Personas) -> None:
    client = personas.client(personas.member)
    assert client.post(reverse("dashboard:api_keys"), {"name": "x"}).status_code == 403
    key = services.api_key_create(org=personas.org, name="k", created_by=personas.owner).api_key
    revoke = reverse("dashboard:api_key_revoke", args=[key.pk])
    assert client.post(revoke).status_code == 403
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_outsider_gets_404_for_our_key(personas: Personas) -> None:
    key = services.api_key_create(org=personas.org, name="k", created_by=personas.owner).api_key
    response = personas.client(personas.outsider).post(
        reverse("dashboard:api_key_revoke", args=[key.pk])
    )
    assert response.status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    listing = personas.client(personas.outsider).get(reverse("dashboard:api_keys"))
    assert key.prefix not in listing.content.decode()


def test_admin_revokes_key(personas: Personas) -> None:
    key = services.api_key_create(org=personas.org, name="k", created_by=personas.owner).api_key
    response = personas.client(personas.admin).post(
        reverse("dashboard:api_key_revoke", args=[key.pk])
    )
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).status == "revoked"


def test_revoke_needs_post(personas: Personas) -> None:
    key = services.api_key_create(org=personas.org, name="k", created_by=personas.owner).api_key
    url = reverse("dashboard:api_key_revoke", args=[key.pk])
    assert personas.client(personas.owner).get(url).status_code == 405


def test_state_changes_require_csrf(personas: Personas) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    assert client.post(reverse("dashboard:api_keys"), {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


# --- team -------------------------------------------------------------------------------------
def test_team_invite_and_manage_through_pages(
    personas: Personas, django_capture_on_commit_callbacks
) -> None:
    client = personas.client(personas.admin)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            reverse("dashboard:team"), {"email": "new@acme.test", "role": "member"}
        )
    assert response.status_code == 302
    assert len(callbacks) == 1
    invitation = Invitation.objects.get(email="new@acme.test")

    page = client.get(reverse("dashboard:team")).content.decode()
    assert "new@acme.test" in page
    assert "member@acme.test" in page

    bad = client.post(reverse("dashboard:team"), {"email": "nope", "role": "member"})
    assert bad.status_code == 400
    dup = client.post(
        reverse("dashboard:team"), {"email": "member@acme.test", "role": "member"}, follow=True
    )
    assert "already a member" in dup.content.decode()

    client.post(reverse("dashboard:invitation_revoke", args=[invitation.pk]))
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is not None

    member = Membership.objects.get(organization=personas.org, user=personas.member)
    client.post(reverse("dashboard:member_role", args=[member.pk]), {"role": "admin"})
    assert Membership.objects.get(pk=member.pk).role == Role.ADMIN
    client.post(reverse("dashboard:member_remove", args=[member.pk]))
    assert not Membership.objects.filter(pk=member.pk).exists()


def test_admin_cannot_remove_owner_via_page(personas: Personas) -> None:
    owner = Membership.objects.get(organization=personas.org, user=personas.owner)
    response = personas.client(personas.admin).post(
        reverse("dashboard:member_remove", args=[owner.pk])
    )
    assert response.status_code == 403
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_outsider_gets_404_on_team_actions(personas: Personas) -> None:
    member = Membership.objects.get(organization=personas.org, user=personas.member)
    invitation = services.invitation_create(
        org=personas.org, actor=personas.owner, email="z@z.io"
    ).invitation
    client = personas.client(personas.outsider)
    for url in (
        reverse("dashboard:member_remove", args=[member.pk]),
        reverse("dashboard:member_role", args=[member.pk]),
        reverse("dashboard:transfer_ownership", args=[member.pk]),
        reverse("dashboard:invitation_revoke", args=[invitation.pk]),
    ):
        assert client.post(url, {"role": "admin"}).status_code == 404, url
    assert Membership.objects.get(pk=member.pk).role == Role.MEMBER
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is None


def test_member_cannot_invite(personas: Personas) -> None:
    response = personas.client(personas.member).post(
        reverse("dashboard:team"), {"email": "x@x.io", "role": "member"}
    )
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_transfer_ownership_page(personas: Personas) -> None:
    admin = Membership.objects.get(organization=personas.org, user=personas.admin)
    assert (
        personas.client(personas.admin)
        .post(reverse("dashboard:transfer_ownership", args=[admin.pk]))
        .status_code
        == 403
    )
    response = personas.client(personas.owner).post(
        reverse("dashboard:transfer_ownership", args=[admin.pk])
    )
    assert response.status_code == 302
    assert Membership.objects.get(pk=admin.pk).role == Role.OWNER


def test_last_owner_cannot_leave_but_member_can(personas: Personas) -> None:
    response = personas.client(personas.owner).post(reverse("dashboard:leave"), follow=True)
    assert "transfer ownership" in response.content.decode()
    assert Membership.objects.filter(organization=personas.org, user=personas.owner).exists()
    member_client = personas.client(personas.member)
    assert member_client.post(reverse("dashboard:leave")).status_code == 302
    assert not Membership.objects.filter(organization=personas.org, user=personas.member).exists()
    # With no organization left, the dashboard says so instead of showing someone else's data.
    assert member_client.get(reverse("dashboard:overview")).status_code == 404


# --- organizations ----------------------------------------------------------------------------
def test_create_and_switch_organizations(personas: Personas) -> None:
    client = personas.client(personas.owner)
    response = client.post(reverse("dashboard:org_create"), {"name": "Second Co"})
    assert response.status_code == 302
    assert "Second Co" in client.get(reverse("dashboard:overview")).content.decode()
    assert client.post(reverse("dashboard:org_create"), {"name": ""}).status_code == 400

    client.post(reverse("dashboard:switch_org"), {"org": personas.org.pk})
    assert client.session[SESSION_KEY] == personas.org.pk
    # Switching into someone else's organization is a 404 and changes nothing.
    assert (
        client.post(reverse("dashboard:switch_org"), {"org": personas.other_org.pk}).status_code
        == 404
    )
    assert client.post(reverse("dashboard:switch_org"), {"org": "abc"}).status_code == 404
    assert client.session[SESSION_KEY] == personas.org.pk


def test_forged_session_org_falls_back_to_own(personas: Personas) -> None:
    client = personas.client(personas.outsider)
    session = client.session
    session[SESSION_KEY] = personas.org.pk
    session.save()
    page = client.get(reverse("dashboard:overview")).content.decode()
    assert "Globex" in page
    assert "Acme" not in page


def test_settings_update(personas: Personas) -> None:
    url = reverse("dashboard:settings")
    assert personas.client(personas.member).post(url, {"name": "Hacked"}).status_code == 403
    assert personas.client(personas.admin).post(url, {"name": ""}).status_code == 400
    response = personas.client(personas.admin).post(
        url, {"name": "Acme Ltd", "zero_retention": "on"}
    )
    assert response.status_code == 302
    personas.org.refresh_from_db()
    assert personas.org.name == "Acme Ltd"
    assert personas.org.zero_retention is True


def test_invitations_addressed_to_me_are_listed_and_joinable(personas: Personas) -> None:
    invitation = services.invitation_create(
        org=personas.org, actor=personas.owner, email="OUTSIDER@globex.test", role=Role.ADMIN
    ).invitation
    # Someone else cannot use the id, and does not see it.
    stranger = personas.client(personas.member)
    assert "Globex" not in stranger.get(reverse("dashboard:overview")).content.decode()
    assert (
        stranger.post(reverse("dashboard:invitation_join", args=[invitation.pk])).status_code == 404
    )

    client = personas.client(personas.outsider)
    page = client.get(reverse("dashboard:overview")).content.decode()
    assert "Invitations for you" in page
    assert "Acme" in page
    response = client.post(reverse("dashboard:invitation_join", args=[invitation.pk]))
    assert response.status_code == 302
    membership = Membership.objects.get(organization=personas.org, user=personas.outsider)
    assert membership.role == Role.ADMIN
    assert client.session[SESSION_KEY] == personas.org.pk
    # Used once; a second join is refused with a message, not a second membership.
    again = client.post(reverse("dashboard:invitation_join", args=[invitation.pk]), follow=True)
    assert "already used" in again.content.decode()
    assert "Invitations for you" not in client.get(reverse("dashboard:overview")).content.decode()


@pytest.mark.usefixtures("catalog")
def test_default_failover_chain_in_settings(personas: Personas) -> None:
    from apps.gateway.models import OrgGatewaySettings

    url = reverse("dashboard:settings")
    client = personas.client(personas.admin)
    response = client.post(
        url, {"name": "Acme", "default_chain": "claude-haiku-4-5, gpt-4o-mini"}, follow=True
    )
    assert response.status_code == 200
    chain = OrgGatewaySettings.objects.get(organization=personas.org).default_chain
    assert chain == ["claude-haiku-4.5", "gpt-4o-mini"]  # aliases stored as catalog ids
    assert "claude-haiku-4.5, gpt-4o-mini" in client.get(url).content.decode()

    # An unknown model saves nothing, not even the other fields.
    bad = client.post(url, {"name": "Renamed", "default_chain": "gpt-4o-mini, nope"}, follow=True)
    assert "Unknown or disabled model" in bad.content.decode()
    personas.org.refresh_from_db()
    assert personas.org.name == "Acme"
    assert OrgGatewaySettings.objects.get(organization=personas.org).default_chain == chain
    assert personas.client(personas.member).post(url, {"name": "x"}).status_code == 403


def test_low_balance_alert_in_settings(personas: Personas) -> None:
    from apps.accounts.models import AuditEvent
    from apps.wallet.models import Wallet
    from apps.wallet.services import wallet_for_org

    url = reverse("dashboard:settings")
    wallet_for_org(org=personas.org)
    client = personas.client(personas.admin)
    assert client.post(url, {"name": "Acme", "low_balance_alert_usd": "12.50"}).status_code == 302
    wallet = Wallet.objects.get(organization=personas.org)
    assert wallet.low_balance_threshold_micros == 12_500_000
    assert (
        AuditEvent.objects.filter(
            organization=personas.org, action="wallet.low_balance_alert"
        ).count()
        == 1
    )
    page = client.get(url).content.decode()
    assert 'name="low_balance_alert_usd" value="12.5"' in page
    # Saving the other settings again leaves the alert as it was: no second audit entry.
    assert client.post(url, {"name": "Acme", "low_balance_alert_usd": "12.5"}).status_code == 302
    assert AuditEvent.objects.filter(action="wallet.low_balance_alert").count() == 1
    # Bad amounts are refused with nothing half-saved (the name stays too).
    for bad in ("0", "-1", "abc", "1.234"):
        response = client.post(url, {"name": "Renamed", "low_balance_alert_usd": bad})
        assert response.status_code == 400, bad
    personas.org.refresh_from_db()
    assert personas.org.name == "Acme"
    assert Wallet.objects.get(organization=personas.org).low_balance_threshold_micros == 12_500_000
    # Empty turns it off; a member may not; the outsider's save touches only Globex.
    assert client.post(url, {"name": "Acme", "low_balance_alert_usd": ""}).status_code == 302
    assert Wallet.objects.get(organization=personas.org).low_balance_threshold_micros is None
    member = personas.client(personas.member)
    assert member.post(url, {"name": "Acme", "low_balance_alert_usd": "5"}).status_code == 403
    outsider = personas.client(personas.outsider)
    assert outsider.post(url, {"name": "Globex", "low_balance_alert_usd": "7"}).status_code == 302
    assert Wallet.objects.get(organization=personas.org).low_balance_threshold_micros is None
    globex = Wallet.objects.get(organization=personas.other_org)
    assert globex.low_balance_threshold_micros == 7_000_000


def test_settings_lists_provider_keys_without_their_secrets(personas: Personas) -> None:
    from apps.gateway.byok import provider_key_set

    secret = "sk-" + "settingspage" * 3 + "WXYZ"
    provider_key_set(org=personas.org, actor=personas.owner, provider="openai", secret=secret)
    page = personas.client(personas.member).get(reverse("dashboard:settings")).content.decode()
    assert "OpenAI" in page
    assert "…WXYZ" in page
    assert secret not in page
    assert "not verified" in page
    other = personas.client(personas.outsider).get(reverse("dashboard:settings")).content.decode()
    assert "…WXYZ" not in other
    assert "No provider keys" in other
