"""Newsletter double opt-in: subscribe → confirmation email → confirm; unsubscribe any time."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from llmwise.errors import ApplicationError, NotFound

from .models import NewsletterSubscription

RESEND_AFTER_SECONDS = 600


def _send_confirmation(subscription_id: int) -> None:
    subscription = NewsletterSubscription.objects.get(pk=subscription_id)
    context = {
        "confirm_url": settings.SITE_URL + reverse("newsletter_confirm", args=[subscription.token]),
        "unsubscribe_url": settings.SITE_URL
        + reverse("newsletter_unsubscribe", args=[subscription.token]),
    }
    send_mail(
        subject="[LLMWise] Confirm your newsletter subscription",
        message=render_to_string("emails/newsletter_confirm.txt", context),
        from_email=None,
        recipient_list=[subscription.email],
    )


@transaction.atomic
def newsletter_subscribe(*, email: str) -> NewsletterSubscription:
    """Record the address and email a confirmation link. Safe to repeat."""
    email = email.strip().lower()
    if "@" not in email:
        raise ApplicationError("Enter a valid email address.", param="email")
    subscription, _created = NewsletterSubscription.objects.select_for_update().get_or_create(
        email=email, defaults={"token": secrets.token_urlsafe(32)}
    )
    if subscription.is_active:
        return subscription
    now = timezone.now()
    recently = subscription.confirmation_sent_at and (
        (now - subscription.confirmation_sent_at).total_seconds() < RESEND_AFTER_SECONDS
    )
    if subscription.unsubscribed_at is not None:
        # Coming back after unsubscribing needs a fresh confirmation.
        subscription.unsubscribed_at = None
        subscription.confirmed_at = None
        recently = False
    if not recently:
        subscription.confirmation_sent_at = now
        transaction.on_commit(lambda: _send_confirmation(subscription.pk))
    subscription.save()
    return subscription


@transaction.atomic
def newsletter_confirm(*, token: str) -> NewsletterSubscription:
    subscription = NewsletterSubscription.objects.select_for_update().filter(token=token).first()
    if subscription is None:
        raise NotFound("This confirmation link is not valid.")
    if subscription.unsubscribed_at is not None:
        raise ApplicationError("This address was unsubscribed; subscribe again to rejoin.")
    if subscription.confirmed_at is None:
        subscription.confirmed_at = timezone.now()
        subscription.save(update_fields=["confirmed_at"])
    return subscription


@transaction.atomic
def newsletter_unsubscribe(*, token: str) -> NewsletterSubscription:
    subscription = NewsletterSubscription.objects.select_for_update().filter(token=token).first()
    if subscription is None:
        raise NotFound("This unsubscribe link is not valid.")
    if subscription.unsubscribed_at is None:
        subscription.unsubscribed_at = timezone.now()
        subscription.save(update_fields=["unsubscribed_at"])
    return subscription
