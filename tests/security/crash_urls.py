"""The project's URLs plus one view that fails while holding secrets (for the error-page test)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from llmwise.urls import urlpatterns as project_urlpatterns


def crash(request: HttpRequest) -> HttpResponse:
    # Locals an unlucky view could hold when something breaks: the caller's credentials.
    authorization = request.headers.get("authorization", "")
    provider_key = request.POST.get("secret", "")
    signature = request.headers.get("stripe-signature", "")
    raise RuntimeError(f"simulated failure ({len(authorization + provider_key + signature)})")


urlpatterns = [path("_test/crash", crash), *project_urlpatterns]
