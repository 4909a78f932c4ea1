"""Dashboard page "Provider keys (BYOK)": list, add or replace, remove, verify.

Everyone in the organization sees which providers have a key (masked to its last four
characters); owners and admins change them. A key of another organization is not found (404).
The secret travels only inbound: the form never renders it back, and error reports hide it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Role
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from . import byok
from .models import Provider, ProviderKey


class ProviderKeyForm(forms.Form):
    provider = forms.ChoiceField(choices=Provider.choices)
    secret = forms.CharField(
        label="API key",
        max_length=byok.SECRET_MAX_CHARS,
        strip=True,
        # render_value=False: a re-rendered form (after an error) never echoes the key.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted; only its last four characters are ever shown again.",
    )


@dataclass(frozen=True)
class ProviderRow:
    provider: Provider
    key: ProviderKey | None


@sensitive_post_parameters("secret")
@org_page()
def provider_keys(request: OrgRequest) -> HttpResponse:
    org = request.org
    can_change = request.membership.has_role(Role.ADMIN)
    form = ProviderKeyForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not can_change:
            raise PermissionDenied("Only owners and admins change provider keys.")
        if form.is_valid():
            try:
                key = byok.provider_key_set(
                    org=org,
                    actor=request.user,
                    provider=form.cleaned_data["provider"],
                    secret=form.cleaned_data["secret"],
                )
            except (NotPermitted, NotFound):
                raise  # org_page answers 403 / 404
            except ApplicationError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                messages.success(
                    request,
                    f"{key.get_provider_display()} key {key.masked} saved. Calls to "
                    f"{key.get_provider_display()} now use it and are not charged credit.",
                )
                return redirect("dashboard:provider_keys")
        status = 400
    stored = {key.provider: key for key in byok.provider_keys_of(org=org)}
    rows = [ProviderRow(provider=p, key=stored.get(p.value)) for p in Provider]
    context = {"nav": "settings", "rows": rows, "form": form, "can_change": can_change}
    return render(request, "gateway/provider_keys.html", context, status=status)


@require_POST
@org_page(Role.ADMIN)
def provider_key_delete(request: OrgRequest, key_id: int) -> HttpResponse:
    key = byok.provider_key_of(org=request.org, key_id=key_id)
    byok.provider_key_delete(org=request.org, actor=request.user, provider=key.provider)
    messages.success(
        request,
        f"{key.get_provider_display()} key {key.masked} removed; "
        f"{key.get_provider_display()} calls use LLMWise credit again.",
    )
    return redirect("dashboard:provider_keys")


@require_POST
@org_page(Role.ADMIN)
def provider_key_verify(request: OrgRequest, key_id: int) -> HttpResponse:
    key = byok.provider_key_of(org=request.org, key_id=key_id)
    result = byok.provider_key_verify(org=request.org, actor=request.user, provider=key.provider)
    if result.ok:
        messages.success(request, result.message)
    elif result.ok is None:
        messages.warning(request, result.message)
    else:
        messages.error(request, result.message)
    return redirect("dashboard:provider_keys")
