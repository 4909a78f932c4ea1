"""Landing page and newsletter double opt-in."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from apps.dashboard.models import NewsletterSubscription

pytestmark = pytest.mark.django_db


def test_landing_explains_product_and_pricing() -> None:
    page = Client().get("/").content.decode()
    assert "One endpoint" in page
    assert "never expire" in page
    assert 'id="pricing"' in page
    # Assets are served by us, never from a CDN.
    assert "/static/vendor/pico.min.css" in page
    assert "/static/vendor/htmx.min.js" in page
    assert not re.search(r'(src|href)="https?://', page)


def test_vendor_assets_are_served() -> None:
    for path in (
        "/static/vendor/htmx.min.js",
        "/static/vendor/pico.min.css",
        "/static/vendor/chart.umd.min.js",
        "/static/css/app.css",
    ):
        response = Client().get(path)
        assert response.status_code == 200, path


def test_newsletter_double_opt_in_and_unsubscribe(django_capture_on_commit_callbacks) -> None:
    client = Client()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/newsletter/subscribe/", {"email": "Reader@Example.com"})
    assert response.status_code == 200
    subscription = NewsletterSubscription.objects.get(email="reader@example.com")
    assert not subscription.is_active
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    confirm = re.search(r"/newsletter/confirm/[\w-]+/", body)
    unsubscribe = re.search(r"/newsletter/unsubscribe/[\w-]+/", body)
    assert confirm
    assert unsubscribe

    assert client.get(confirm.group(0)).status_code == 200
    subscription.refresh_from_db()
    assert subscription.is_active

    # Subscribing again while active sends nothing more.
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/newsletter/subscribe/", {"email": "reader@example.com"})
    assert len(mail.outbox) == 1

    assert client.get(unsubscribe.group(0)).status_code == 200  # a confirmation page only
    subscription.refresh_from_db()
    assert subscription.is_active
    assert client.post(unsubscribe.group(0)).status_code == 200
    subscription.refresh_from_db()
    assert not subscription.is_active
    # A stale confirm link cannot resubscribe an unsubscribed address.
    assert client.get(confirm.group(0)).status_code == 409


def test_newsletter_bad_input() -> None:
    response = Client().post("/newsletter/subscribe/", {"email": "not-an-email"})
    assert response.status_code == 400
    assert "valid email" in response.content.decode()
    assert not NewsletterSubscription.objects.exists()
    assert Client().get("/newsletter/confirm/nope/").status_code == 404
    assert Client().post("/newsletter/unsubscribe/nope/").status_code == 404
