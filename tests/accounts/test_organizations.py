"""Organizations, roles, invitations and the audit trail, through the services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import AuditEvent, Invitation, Membership, Organization, Role
from llmwise.errors import ApplicationError, Conflict, NotFound, NotPermitted
from tests.conftest import Personas
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _membership(personas: Personas, user) -> Membership:
    return Membership.objects.get(organization=personas.org, user=user)


def test_organization_create_makes_owner_and_unique_slug() -> None:
    user = UserFactory()
    first = services.organization_create(name="Acme Corp", owner=user)
    second = services.organization_create(name="Acme Corp", owner=user)
    assert first.slug == "acme-corp"
    assert second.slug.startswith("acme-corp-")
    assert Membership.objects.get(organization=first, user=user).role == Role.OWNER
    assert AuditEvent.objects.filter(organization=first, action="organization.create").exists()


def test_organization_create_rejects_bad_input_and_taken_slug() -> None:
    user = UserFactory()
    services.organization_create(name="Taken", owner=user, slug="taken")
    with pytest.raises(Conflict):
        services.organization_create(name="Other", owner=user, slug="taken")
    with pytest.raises(ApplicationError):
        services.organization_create(name="   ", owner=user)
    with pytest.raises(ApplicationError):
        services.organization_create(name="x", owner=user, slug="Not A Slug")
    assert Organization.objects.count() == 1


# --- invitations ------------------------------------------------------------------------------
def test_invitation_roundtrip(personas: Personas, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        issued = services.invitation_create(
            org=personas.org, actor=personas.admin, email="New@Example.com", role=Role.ADMIN
        )
    assert issued.invitation.email == "new@example.com"
    # Only a hash of the token is stored.
    assert issued.token not in Invitation.objects.values_list("token_hash", flat=True)
    assert len(mail.outbox) == 1
    assert issued.accept_path in mail.outbox[0].body

    newcomer = UserFactory(email="new@example.com")
    membership = services.invitation_accept(token=issued.token, user=newcomer)
    assert membership.organization == personas.org
    assert membership.role == Role.ADMIN
    with pytest.raises(ApplicationError, match="already used"):
        services.invitation_accept(token=issued.token, user=newcomer)


def test_expired_invitation_is_refused(personas: Personas) -> None:
    issued = services.invitation_create(org=personas.org, actor=personas.owner, email="late@x.io")
    Invitation.objects.filter(pk=issued.invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(ApplicationError, match="expired"):
        services.invitation_accept(token=issued.token, user=UserFactory(email="late@x.io"))
    assert not Membership.objects.filter(user__email="late@x.io", organization=personas.org)


def test_invitation_for_someone_else_is_refused(personas: Personas) -> None:
    issued = services.invitation_create(org=personas.org, actor=personas.owner, email="a@x.io")
    with pytest.raises(NotPermitted):
        services.invitation_accept(token=issued.token, user=personas.outsider)
    assert not Membership.objects.filter(user=personas.outsider, organization=personas.org)


def test_reinvite_replaces_previous_and_revoke_works(personas: Personas) -> None:
    first = services.invitation_create(org=personas.org, actor=personas.owner, email="b@x.io")
    second = services.invitation_create(org=personas.org, actor=personas.owner, email="b@x.io")
    with pytest.raises(ApplicationError, match="withdrawn"):
        services.invitation_accept(token=first.token, user=UserFactory(email="b@x.io"))
    services.invitation_revoke(
        org=personas.org, actor=personas.admin, invitation_id=second.invitation.pk
    )
    with pytest.raises(ApplicationError, match="withdrawn"):
        services.invitation_accept(token=second.token, user=UserFactory(email="c@x.io"))


def test_invitation_rules(personas: Personas) -> None:
    with pytest.raises(Conflict):
        services.invitation_create(org=personas.org, actor=personas.owner, email="member@acme.test")
    with pytest.raises(ApplicationError):
        services.invitation_create(
            org=personas.org, actor=personas.owner, email="x@x.io", role=Role.OWNER
        )
    with pytest.raises(ApplicationError):
        services.invitation_create(org=personas.org, actor=personas.owner, email="nonsense")
    with pytest.raises(NotPermitted):
        services.invitation_create(org=personas.org, actor=personas.member, email="x@x.io")
    with pytest.raises(NotFound):
        services.invitation_create(org=personas.org, actor=personas.outsider, email="x@x.io")
    with pytest.raises(NotFound):
        services.invitation_accept(token="not-a-token", user=personas.outsider)
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_invitation_accept_page_requires_login_then_joins(personas: Personas) -> None:
    issued = services.invitation_create(org=personas.org, actor=personas.owner, email="j@x.io")
    anonymous = Client().get(issued.accept_path)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")

    joiner = UserFactory(email="j@x.io")
    client = Client()
    client.force_login(joiner)
    assert client.get(issued.accept_path).status_code == 200
    response = client.post(issued.accept_path)
    assert response.status_code == 302
    assert Membership.objects.filter(user=joiner, organization=personas.org).exists()
    # The joined org becomes the current one.
    assert "Acme" in client.get("/dashboard/").content.decode()


def test_invitation_page_for_unknown_token_is_404() -> None:
    assert Client().get("/invitations/bogus/").status_code == 404


# --- roles ------------------------------------------------------------------------------------
def test_admin_manages_members_but_not_owners(personas: Personas) -> None:
    member = _membership(personas, personas.member)
    services.membership_change_role(
        org=personas.org, actor=personas.admin, membership_id=member.pk, role=Role.ADMIN
    )
    assert _membership(personas, personas.member).role == Role.ADMIN
    owner = _membership(personas, personas.owner)
    with pytest.raises(NotPermitted):
        services.membership_remove(org=personas.org, actor=personas.admin, membership_id=owner.pk)
    with pytest.raises(NotPermitted):
        services.membership_change_role(
            org=personas.org, actor=personas.admin, membership_id=owner.pk, role=Role.MEMBER
        )
    services.membership_remove(org=personas.org, actor=personas.admin, membership_id=member.pk)
    assert not Membership.objects.filter(user=personas.member, organization=personas.org)
    actions = set(
        AuditEvent.objects.filter(organization=personas.org).values_list("action", flat=True)
    )
    assert {"member.role_change", "member.remove"} <= actions


def test_member_cannot_manage_and_outsider_cannot_see(personas: Personas) -> None:
    admin = _membership(personas, personas.admin)
    with pytest.raises(NotPermitted):
        services.membership_remove(org=personas.org, actor=personas.member, membership_id=admin.pk)
    with pytest.raises(NotFound):
        services.membership_remove(
            org=personas.org, actor=personas.outsider, membership_id=admin.pk
        )
    other_owner = Membership.objects.get(organization=personas.other_org)
    with pytest.raises(NotFound):  # another org's membership id through our org
        services.membership_remove(
            org=personas.org, actor=personas.owner, membership_id=other_owner.pk
        )
    assert Membership.objects.count() == 4


def test_transfer_ownership_and_leave(personas: Personas) -> None:
    with pytest.raises(ApplicationError, match="only owner"):
        services.membership_leave(org=personas.org, user=personas.owner)
    with pytest.raises(NotPermitted):
        services.organization_transfer_ownership(
            org=personas.org,
            actor=personas.admin,
            membership_id=_membership(personas, personas.member).pk,
        )
    services.organization_transfer_ownership(
        org=personas.org,
        actor=personas.owner,
        membership_id=_membership(personas, personas.admin).pk,
    )
    assert _membership(personas, personas.admin).role == Role.OWNER
    assert _membership(personas, personas.owner).role == Role.ADMIN
    services.membership_leave(org=personas.org, user=personas.owner)
    assert not Membership.objects.filter(user=personas.owner, organization=personas.org)
    assert AuditEvent.objects.filter(action="organization.transfer_ownership").exists()


def test_organization_update(personas: Personas) -> None:
    services.organization_update(
        org=personas.org, actor=personas.admin, name="Acme Inc", zero_retention=True
    )
    personas.org.refresh_from_db()
    assert (personas.org.name, personas.org.zero_retention) == ("Acme Inc", True)
    with pytest.raises(NotPermitted):
        services.organization_update(org=personas.org, actor=personas.member, name="Nope")
    event = AuditEvent.objects.get(action="organization.update")
    assert event.data["name"] == ["Acme", "Acme Inc"]


def test_audit_record_keeps_actor_label() -> None:
    user = UserFactory(email="gone@x.io")
    org = services.organization_create(name="Z", owner=user)
    event = services.audit_record(org=org, actor=user, action="test.thing", target="t:1")
    user.delete()
    event.refresh_from_db()
    assert event.actor is None
    assert event.actor_label == "gone@x.io"
