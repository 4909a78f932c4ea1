"""Billing pages of the dashboard. Thin: parse, call a service or selector, render.

Everyone in the organization sees the balance; owners and admins also buy credit and see the
purchase history, the ledger, receipts and the CSV export. Another organization's purchase is
simply not found (404).
"""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Role
from llmwise.csv_export import csv_streaming_response

from . import selectors, services
from .exports import ledger_csv_rows
from .forms import CreditPurchaseForm, LedgerFilterForm, LowBalanceAlertForm
from .models import CreditPurchase, format_usd

LEDGER_PAGE_SIZE = 50
PURCHASES_SHOWN = 50


def _checkout_urls(request: OrgRequest) -> services.CheckoutUrls:
    success = request.build_absolute_uri(reverse("dashboard:billing_return"))
    cancel = request.build_absolute_uri(reverse("dashboard:billing"))
    return services.CheckoutUrls(
        success_url=success + "?session_id={CHECKOUT_SESSION_ID}",
        cancel_url=cancel + "?checkout=canceled",
    )


@org_page()
def billing(request: OrgRequest) -> HttpResponse:
    org = request.org
    is_admin = request.membership.has_role(Role.ADMIN)
    form = CreditPurchaseForm(request.POST or None)
    if request.method == "POST":
        if not is_admin:
            raise PermissionDenied("Only owners and admins buy credit.")
        if form.is_valid():
            purchase = services.purchase_checkout_start(
                org=org,
                actor=request.user,
                amount_micros=form.cleaned_data["amount_micros"],
                currency=form.cleaned_data["currency"],
                urls=_checkout_urls(request),
            )
            return redirect(purchase.checkout_url)
    if request.GET.get("checkout") == "canceled":
        messages.info(request, "Checkout canceled; nothing was charged.")
    context: dict[str, object] = {
        "nav": "billing",
        "summary": selectors.wallet_summary(org=org),
        "is_admin": is_admin,
        "form": form,
    }
    if is_admin:
        filters = LedgerFilterForm(request.GET or None)
        entries = selectors.ledger_entries_of(org=org, **filters.filters())
        page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
        threshold = context["summary"].low_balance_threshold_micros  # type: ignore[attr-defined]
        context.update(
            {
                "purchases": selectors.purchases_of(org=org)[:PURCHASES_SHOWN],
                "filter_form": filters,
                "ledger_page": page,
                "query": request.GET.urlencode(),
                "alert_form": LowBalanceAlertForm(
                    initial={"threshold_usd": format_usd(threshold) if threshold else None}
                ),
            }
        )
    return render(
        request,
        "wallet/billing.html",
        context,
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


@org_page(Role.ADMIN)
def billing_return(request: OrgRequest) -> HttpResponse:
    """Stripe's success_url: find the purchase of this session (in this org) and show it."""
    session_id = request.GET.get("session_id", "")
    purchase = CreditPurchase.objects.filter(
        organization=request.org, stripe_checkout_session_id=session_id
    ).first()
    if not session_id or purchase is None:
        raise Http404("Purchase not found.")
    return redirect("dashboard:billing_purchase", public_id=purchase.public_id)


@org_page(Role.ADMIN)
def purchase_detail(request: OrgRequest, public_id: str) -> HttpResponse:
    """The purchase's state as the webhook left it (it may have come before the browser)."""
    purchase = selectors.purchase_of(org=request.org, public_id=public_id)
    context = {
        "nav": "billing",
        "purchase": purchase,
        "summary": selectors.wallet_summary(org=request.org),
    }
    if request.headers.get("HX-Request"):
        return render(request, "wallet/_purchase_status.html", context)
    return render(request, "wallet/purchase.html", context)


@org_page(Role.ADMIN)
def purchase_receipt(request: OrgRequest, public_id: str) -> HttpResponse:
    purchase = selectors.purchase_of(org=request.org, public_id=public_id)
    if purchase.status not in (CreditPurchase.Status.PAID, CreditPurchase.Status.REFUNDED):
        raise Http404("There is no receipt for an unpaid purchase.")
    return render(request, "wallet/receipt.html", {"purchase": purchase, "org": request.org})


@require_POST
@org_page(Role.ADMIN)
def low_balance_alert(request: OrgRequest) -> HttpResponse:
    form = LowBalanceAlertForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter an amount of at least $0.01, or leave it empty.")
        return redirect("dashboard:billing")
    threshold = form.threshold_micros()
    services.wallet_set_low_balance_alert(
        org=request.org, actor=request.user, threshold_micros=threshold
    )
    if threshold is None:
        messages.success(request, "Low-balance alert turned off.")
    else:
        messages.success(request, f"We will email you below ${format_usd(threshold)[:-4]}.")
    return redirect("dashboard:billing")


@org_page(Role.ADMIN)
def ledger_csv(request: OrgRequest) -> HttpResponse:
    filters = LedgerFilterForm(request.GET or None)
    entries = selectors.ledger_entries_of(org=request.org, **filters.filters())
    response = csv_streaming_response(
        rows=ledger_csv_rows(entries.iterator()), filename=f"ledger-{request.org.slug}.csv"
    )
    # Streamed so a long ledger never sits in memory; org_page's type only knows HttpResponse.
    return cast(HttpResponse, response)
