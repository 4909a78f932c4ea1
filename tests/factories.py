"""factory_boy factories for accounts data. Built through the real services where it matters."""

from __future__ import annotations

import factory
from allauth.account.models import EmailAddress

from apps.accounts import services
from apps.accounts.models import Membership, Organization, Role, User

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def verified(obj: User, create: bool, extracted: bool | None, **kwargs: object) -> None:
        obj.save()
        if create and extracted is not False:
            EmailAddress.objects.create(user=obj, email=obj.email, primary=True, verified=True)


def org_with_owner(name: str = "Acme", owner: User | None = None) -> Organization:
    return services.organization_create(name=name, owner=owner or UserFactory())


def add_member(org: Organization, role: str = Role.MEMBER, user: User | None = None) -> User:
    user = user or UserFactory()
    Membership.objects.create(organization=org, user=user, role=role)
    return user
