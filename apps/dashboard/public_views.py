"""Public pages: landing, newsletter double opt-in, invitation links."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts import services as account_services
from apps.accounts.middleware import SESSION_KEY
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from . import services
from .forms import NewsletterForm


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "landing.html", {"newsletter_form": NewsletterForm()})


@require_POST
def newsletter_subscribe(request: HttpRequest) -> HttpResponse:
    form = NewsletterForm(request.POST)
    if not form.is_valid():
        return render(request, "landing.html", {"newsletter_form": form}, status=400)
    services.newsletter_subscribe(email=form.cleaned_data["email"])
    return render(request, "newsletter/check_email.html", {"email": form.cleaned_data["email"]})


def newsletter_confirm(request: HttpRequest, token: str) -> HttpResponse:
    try:
        subscription = services.newsletter_confirm(token=token)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except ApplicationError as exc:
        return render(request, "newsletter/result.html", {"message": exc.message}, status=409)
    return render(
        request,
        "newsletter/result.html",
        {"message": f"Thanks! {subscription.email} is subscribed.", "token": subscription.token},
    )


def newsletter_unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    # GET shows a confirmation button (mail scanners follow links); POST unsubscribes.
    if request.method == "POST":
        try:
            subscription = services.newsletter_unsubscribe(token=token)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        return render(
            request,
            "newsletter/result.html",
            {"message": f"{subscription.email} will get no more newsletters."},
        )
    return render(request, "newsletter/unsubscribe.html", {"token": token})


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    try:
        invitation = account_services.invitation_for_token(token=token)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    if not request.user.is_authenticated:
        messages.info(
            request,
            f"Sign in (or sign up) as {invitation.email} to join {invitation.organization.name}.",
        )
        return redirect_to_login(request.get_full_path())
    if request.method == "POST":
        try:
            membership = account_services.invitation_accept(
                token=token,
                user=request.user,
            )
        except (ApplicationError, NotPermitted) as exc:
            return render(
                request,
                "invitations/accept.html",
                {"invitation": invitation, "error": exc.message},
                status=409,
            )
        request.session[SESSION_KEY] = membership.organization_id
        messages.success(request, f"Welcome to {membership.organization.name}.")
        return redirect("dashboard:overview")
    return render(request, "invitations/accept.html", {"invitation": invitation})
