"""Dashboard pages "Routing policies": list, create, edit (form + JSON/YAML), version history
with rollback, default, key pins, delete, and the dry run.

Everyone in the organization reads policies and runs the dry run; owners and admins change them
(a member's write is a 403). Another organization's policy is not found (404). Thin views: the
services validate, version and audit-log; errors of a document are shown next to its text.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts import selectors as account_selectors
from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import ApiKey, Role
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from . import policy_selectors as selectors
from . import policy_services as services
from .models import Provider, RoutingPolicy, RoutingPolicyVersion
from .providers.base import ChatMessage
from .routing.policies import (
    APPLIES_TO,
    AUTO,
    CATEGORIES,
    COMPLEXITIES,
    LATENCY_BUDGET_MAX_MS,
    MAX_PRICE_USD_LIMIT,
    PolicyInvalid,
    PolicyIssue,
    policy_document_dump,
)

NAV = "routing"
FORMATS = ("yaml", "json")
DRY_RUN_PROMPT_MAX_CHARS = 100_000
STARTER_DOCUMENT = """\
# Routing policy: the first rule that matches a request wins; see docs/routing.md.
rules:
  - name: hard code and maths
    when:
      category: [code, math_reasoning]
      complexity: [high]
    model: claude-sonnet-4.5
    fallbacks: [gpt-4.1]
  - name: quick answers
    when:
      category: [classification, extraction, qa]
    model: gpt-4o-mini
    fallbacks: [gemini-2.5-flash-lite]
default:
  model: auto
max_price_per_request_usd: 0.05
"""


def _can_edit(request: OrgRequest) -> bool:
    return request.membership.has_role(Role.ADMIN)


def _require_edit(request: OrgRequest) -> None:
    if not _can_edit(request):
        raise PermissionDenied("Only owners and admins change routing policies.")


def _format(value: str | None) -> str:
    return value if value in FORMATS else "yaml"


# --- forms ------------------------------------------------------------------------------------
class PolicyCreateForm(forms.Form):
    name = forms.SlugField(
        max_length=60,
        help_text="Lower-case letters, digits and hyphens. Requests select a policy by this name; "
        "it cannot change later.",
    )
    description = forms.CharField(max_length=services.DESCRIPTION_MAX_CHARS, required=False)
    text = forms.CharField(
        label="Policy (YAML or JSON)",
        widget=forms.Textarea(attrs={"rows": 22, "spellcheck": "false", "class": "code"}),
        strip=False,
        initial=STARTER_DOCUMENT,
    )
    is_default = forms.BooleanField(
        label="Make it the organization's default", required=False, initial=False
    )


class PolicyTextForm(forms.Form):
    text = forms.CharField(
        label="Policy (YAML or JSON)",
        widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false", "class": "code"}),
        strip=False,
    )
    note = forms.CharField(
        max_length=services.NOTE_MAX_CHARS, required=False, help_text="What changed, and why."
    )


class PolicyFieldsForm(forms.Form):
    """The common top-level fields; rules are edited in the text view and kept as they are."""

    description = forms.CharField(max_length=services.DESCRIPTION_MAX_CHARS, required=False)
    extends = forms.ChoiceField(required=False, help_text="Inherit another policy's rules.")
    applies_to = forms.ChoiceField(
        choices=[(value, value) for value in APPLIES_TO],
        help_text="auto: only requests for model 'auto' are routed; all: every request.",
    )
    default_model = forms.CharField(
        required=False,
        max_length=100,
        help_text="When no rule matches: a model id or 'auto'. Empty: the requested model.",
    )
    default_fallbacks = forms.CharField(
        required=False, max_length=500, help_text="Comma-separated model ids."
    )
    max_price_per_request_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.000001"),
        max_value=MAX_PRICE_USD_LIMIT,
        decimal_places=6,
        label="Max price per request (USD)",
    )
    allowed_providers = forms.MultipleChoiceField(
        required=False,
        choices=Provider.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every provider.",
    )
    prefer_byok = forms.BooleanField(
        required=False, label="Prefer models whose provider has our own key (BYOK)"
    )
    latency_budget_ms = forms.IntegerField(
        required=False, min_value=1, max_value=LATENCY_BUDGET_MAX_MS, label="Latency budget (ms)"
    )
    note = forms.CharField(max_length=services.NOTE_MAX_CHARS, required=False)

    # Document paths whose errors belong to a field of this form.
    PATH_FIELDS = {
        "extends": "extends",
        "applies_to": "applies_to",
        "default": "default_model",
        "default.model": "default_model",
        "default.fallbacks": "default_fallbacks",
        "max_price_per_request_usd": "max_price_per_request_usd",
        "allowed_providers": "allowed_providers",
        "prefer_byok": "prefer_byok",
        "latency_budget_ms": "latency_budget_ms",
    }

    def __init__(self, *args: Any, parents: list[str], **kwargs: Any) -> None:
        # Own element ids: the text form on the same page also has a "note".
        kwargs.setdefault("auto_id", "fields_%s")
        super().__init__(*args, **kwargs)
        extends = self.fields["extends"]
        assert isinstance(extends, forms.ChoiceField)  # noqa: S101 - declared above
        extends.choices = [("", "— nothing —"), *[(name, name) for name in parents]]

    @classmethod
    def initial_for(cls, policy: RoutingPolicy, document: dict[str, Any]) -> dict[str, Any]:
        default = document.get("default") or {}
        return {
            "description": policy.description,
            "extends": document.get("extends", ""),
            "applies_to": document.get("applies_to", APPLIES_TO[0]),
            "default_model": default.get("model", ""),
            "default_fallbacks": ", ".join(default.get("fallbacks", [])),
            "max_price_per_request_usd": document.get("max_price_per_request_usd"),
            "allowed_providers": document.get("allowed_providers", []),
            "prefer_byok": document.get("prefer_byok", False),
            "latency_budget_ms": document.get("latency_budget_ms"),
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("default_fallbacks", "").strip() and not data.get("default_model"):
            self.add_error("default_fallbacks", "Give a default model first.")
        return data

    def document(self, current: dict[str, Any]) -> dict[str, Any]:
        """``current`` with the form's fields in place of its own (rules untouched)."""
        data = self.cleaned_data
        document = {key: value for key, value in current.items() if key not in self.PATH_FIELDS}
        if data["extends"]:
            document["extends"] = data["extends"]
        if data["applies_to"] != APPLIES_TO[0]:
            document["applies_to"] = data["applies_to"]
        if data["default_model"].strip():
            default: dict[str, Any] = {"model": data["default_model"].strip()}
            fallbacks = [name.strip() for name in data["default_fallbacks"].split(",")]
            if any(fallbacks):
                default["fallbacks"] = [name for name in fallbacks if name]
            document["default"] = default
        if data["max_price_per_request_usd"] is not None:
            # A JSON number, as people write it; validation reads it back exactly (6 decimals).
            document["max_price_per_request_usd"] = float(data["max_price_per_request_usd"])
        if data["allowed_providers"]:
            document["allowed_providers"] = list(data["allowed_providers"])
        if data["prefer_byok"]:
            document["prefer_byok"] = True
        if data["latency_budget_ms"] is not None:
            document["latency_budget_ms"] = data["latency_budget_ms"]
        return document

    def add_issues(self, issues: list[PolicyIssue]) -> None:
        for issue in issues:
            field = next(
                (
                    name
                    for path, name in self.PATH_FIELDS.items()
                    if issue.path == path or issue.path.startswith((f"{path}.", f"{path}["))
                ),
                None,
            )
            self.add_error(field, str(issue) if field is None else issue.message)


def _api_key_choices(request: OrgRequest) -> list[tuple[str, str]]:
    keys = account_selectors.api_keys_of(org=request.org)
    return [(str(key.pk), f"{key.name} ({key.prefix}…)") for key in keys if key.is_usable]


class DryRunForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}), max_length=DRY_RUN_PROMPT_MAX_CHARS
    )
    model = forms.CharField(
        initial=AUTO, max_length=100, help_text="The model the request asks for."
    )
    policy = forms.ChoiceField(required=False, label="Policy named in the request")
    api_key = forms.ChoiceField(required=False, label="API key making the request")
    category = forms.ChoiceField(
        required=False,
        choices=[("", "— classify the prompt —"), *[(c, c) for c in CATEGORIES]],
    )
    complexity = forms.ChoiceField(
        required=False,
        choices=[("", "— classify the prompt —"), *[(c, c) for c in COMPLEXITIES]],
    )
    max_tokens = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args: Any, request: OrgRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = selectors.routing_policies_of(org=request.org).values_list("name", flat=True)
        policy = self.fields["policy"]
        key = self.fields["api_key"]
        assert isinstance(policy, forms.ChoiceField)  # noqa: S101 - declared above
        assert isinstance(key, forms.ChoiceField)  # noqa: S101 - declared above
        policy.choices = [("", "— none (key pin, then default) —"), *[(n, n) for n in names]]
        key.choices = [("", "— none —"), *_api_key_choices(request)]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("category")) != bool(data.get("complexity")):
            raise forms.ValidationError("State both the category and the complexity, or neither.")
        return data


# --- list and create ----------------------------------------------------------------------------
@org_page()
def policy_list(request: OrgRequest) -> HttpResponse:
    policies = selectors.routing_policies_of(org=request.org)
    pins = selectors.api_key_pins_of(org=request.org)
    pinned: dict[int, int] = {}
    for policy in pins.values():
        pinned[policy.pk] = pinned.get(policy.pk, 0) + 1
    rows = [(policy, pinned.get(policy.pk, 0)) for policy in policies]
    context = {"nav": NAV, "rows": rows, "can_edit": _can_edit(request)}
    return render(request, "gateway/policies/list.html", context)


@org_page(Role.ADMIN)
def policy_create(request: OrgRequest) -> HttpResponse:
    form = PolicyCreateForm(request.POST or None)
    issues: list[PolicyIssue] = []
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                policy = services.routing_policy_create(
                    org=request.org,
                    actor=request.user,
                    name=form.cleaned_data["name"],
                    description=form.cleaned_data["description"],
                    text=form.cleaned_data["text"],
                    is_default=form.cleaned_data["is_default"],
                )
            except PolicyInvalid as exc:
                issues = exc.issues
            except (NotFound, NotPermitted):
                raise
            except ApplicationError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                messages.success(request, f"Policy {policy.name!r} created (version 1).")
                return redirect("dashboard:routing_policy", policy_id=policy.pk)
        status = 400
    text = form["text"].value() or ""
    context = {
        "nav": NAV,
        "form": form,
        "issues": issues,
        "numbered": _numbered(text, issues),
        "categories": CATEGORIES,
        "complexities": COMPLEXITIES,
    }
    return render(request, "gateway/policies/create.html", context, status=status)


# --- detail: edit, default, pins ------------------------------------------------------------------
@dataclass(frozen=True)
class NumberedLine:
    number: int
    text: str
    issues: list[PolicyIssue]


def _numbered(text: str, issues: list[PolicyIssue]) -> list[NumberedLine]:
    """The submitted text line by line, each with the errors found on it (shown side by side)."""
    if not issues:
        return []
    by_line: dict[int, list[PolicyIssue]] = {}
    for issue in issues:
        if issue.line is not None:
            by_line.setdefault(issue.line, []).append(issue)
    return [
        NumberedLine(number, line, by_line.get(number, []))
        for number, line in enumerate(text.splitlines() or [""], start=1)
    ]


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    pinned_to: RoutingPolicy | None


def _detail_context(
    request: OrgRequest,
    policy: RoutingPolicy,
    *,
    fields_form: PolicyFieldsForm,
    text_form: PolicyTextForm,
    issues: list[PolicyIssue],
    fmt: str,
) -> dict[str, Any]:
    pins = selectors.api_key_pins_of(org=request.org)
    keys = [
        KeyRow(key=key, pinned_to=pins.get(key.pk))
        for key in account_selectors.api_keys_of(org=request.org)
        if key.is_usable or key.pk in pins
    ]
    effective_error = None
    try:
        effective = selectors.routing_policy_effective(policy=policy)
    except PolicyInvalid as exc:  # a parent changed under it; the page still opens
        effective, effective_error = None, exc.message
    return {
        "nav": NAV,
        "policy": policy,
        "version": policy.current_version,
        "effective": effective,
        "effective_error": effective_error,
        "fields_form": fields_form,
        "text_form": text_form,
        "issues": issues,
        "numbered": _numbered(text_form["text"].value() or "", issues),
        "format": fmt,
        "formats": FORMATS,
        "key_rows": keys,
        "can_edit": _can_edit(request),
        "categories": CATEGORIES,
        "complexities": COMPLEXITIES,
    }


@org_page()
def policy_detail(request: OrgRequest, policy_id: int) -> HttpResponse:
    org = request.org
    policy = selectors.routing_policy_of(org=org, policy_id=policy_id)
    assert policy.current_version is not None  # noqa: S101 - every committed policy has one
    document = policy.current_version.document
    fmt = _format(request.GET.get("format") or request.POST.get("format"))
    parents = [
        name
        for name in selectors.routing_policies_of(org=org).values_list("name", flat=True)
        if name != policy.name
    ]
    fields_form = PolicyFieldsForm(
        initial=PolicyFieldsForm.initial_for(policy, document), parents=parents
    )
    text_form = PolicyTextForm(initial={"text": policy_document_dump(document=document, fmt=fmt)})
    issues: list[PolicyIssue] = []
    status = 200
    if request.method == "POST":
        _require_edit(request)
        editing = request.POST.get("editor")
        try:
            if editing == "fields":
                fields_form = PolicyFieldsForm(request.POST, parents=parents)
                if not fields_form.is_valid():
                    raise _FormInvalid
                try:
                    updated = services.routing_policy_update(
                        org=org,
                        actor=request.user,
                        policy_id=policy.pk,
                        document=fields_form.document(document),
                        description=fields_form.cleaned_data["description"],
                        note=fields_form.cleaned_data["note"],
                    )
                except PolicyInvalid as exc:
                    fields_form.add_issues(exc.issues)
                    raise _FormInvalid from exc
            else:
                text_form = PolicyTextForm(request.POST)
                if not text_form.is_valid():
                    raise _FormInvalid
                try:
                    updated = services.routing_policy_update(
                        org=org,
                        actor=request.user,
                        policy_id=policy.pk,
                        text=text_form.cleaned_data["text"],
                        note=text_form.cleaned_data["note"],
                    )
                except PolicyInvalid as exc:
                    issues = exc.issues
                    raise _FormInvalid from exc
        except _FormInvalid:
            status = 400
        else:
            new = updated.current_version
            if new is not None and new.pk != policy.current_version.pk:
                messages.success(request, f"Saved as version {new.number}.")
            else:
                messages.info(request, "Nothing changed in the document.")
            return redirect(f"{request.path}?format={fmt}")
    context = _detail_context(
        request, policy, fields_form=fields_form, text_form=text_form, issues=issues, fmt=fmt
    )
    return render(request, "gateway/policies/detail.html", context, status=status)


class _FormInvalid(Exception):
    """A form of the detail page did not save: re-render it with its errors (400)."""


@require_POST
@org_page(Role.ADMIN)
def policy_set_default(request: OrgRequest, policy_id: int) -> HttpResponse:
    policy = selectors.routing_policy_of(org=request.org, policy_id=policy_id)
    make_default = request.POST.get("default") != "0"
    if make_default or policy.is_default:
        # Clearing is only this policy's business when it is the default.
        services.routing_policy_set_default(
            org=request.org, actor=request.user, policy_id=policy.pk if make_default else None
        )
    if make_default:
        messages.success(request, f"{policy.name!r} is now the organization's default policy.")
    else:
        messages.success(request, "The organization has no default policy now.")
    return redirect("dashboard:routing_policy", policy_id=policy.pk)


@require_POST
@org_page(Role.ADMIN)
def policy_pin(request: OrgRequest, policy_id: int) -> HttpResponse:
    policy = selectors.routing_policy_of(org=request.org, policy_id=policy_id)
    try:
        key_id = int(request.POST.get("api_key", ""))
    except ValueError as exc:
        raise NotFound("API key not found.") from exc
    pin = request.POST.get("action") != "unpin"
    services.api_key_policy_pin(
        org=request.org,
        actor=request.user,
        api_key_id=key_id,
        policy_id=policy.pk if pin else None,
    )
    messages.success(request, "Key pinned to this policy." if pin else "Key unpinned.")
    return redirect("dashboard:routing_policy", policy_id=policy.pk)


@require_POST
@org_page(Role.ADMIN)
def policy_delete(request: OrgRequest, policy_id: int) -> HttpResponse:
    policy = selectors.routing_policy_of(org=request.org, policy_id=policy_id)
    services.routing_policy_delete(org=request.org, actor=request.user, policy_id=policy.pk)
    messages.success(request, f"Policy {policy.name!r} deleted.")
    return redirect("dashboard:routing_policies")


# --- versions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk" or "same"
    text: str


@dataclass(frozen=True)
class VersionRow:
    version: RoutingPolicyVersion
    is_current: bool
    diff: list[DiffLine]


def _diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[DiffLine]:
    old = policy_document_dump(document=before, fmt="yaml").splitlines() if before else []
    new = policy_document_dump(document=after, fmt="yaml").splitlines()
    lines = []
    for line in list(difflib.unified_diff(old, new, lineterm="", n=2))[2:]:
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        lines.append(DiffLine(kind, line))
    return lines


@org_page()
def policy_versions(request: OrgRequest, policy_id: int) -> HttpResponse:
    policy = selectors.routing_policy_of(org=request.org, policy_id=policy_id)
    versions = list(selectors.routing_policy_versions_of(policy=policy))
    rows = []
    for index, version in enumerate(versions):
        previous = versions[index + 1].document if index + 1 < len(versions) else None
        rows.append(
            VersionRow(
                version=version,
                is_current=version.pk == policy.current_version_id,
                diff=_diff(previous, version.document),
            )
        )
    context = {"nav": NAV, "policy": policy, "rows": rows, "can_edit": _can_edit(request)}
    return render(request, "gateway/policies/versions.html", context)


@require_POST
@org_page(Role.ADMIN)
def policy_rollback(request: OrgRequest, policy_id: int, number: int) -> HttpResponse:
    policy = selectors.routing_policy_of(org=request.org, policy_id=policy_id)
    version = services.routing_policy_rollback(
        org=request.org, actor=request.user, policy_id=policy.pk, version_number=number
    )
    messages.success(
        request, f"Version {number} restored as version {version.number} of {policy.name!r}."
    )
    return redirect("dashboard:routing_policy_versions", policy_id=policy.pk)


# --- dry run ------------------------------------------------------------------------------------
@org_page()
def policy_dry_run(request: OrgRequest) -> HttpResponse:
    """Read-only for everyone in the organization: nothing is called, nothing is charged."""
    form = DryRunForm(request.POST or None, request=request)
    result = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            api_key = (
                selectors.api_key_of(org=request.org, api_key_id=int(data["api_key"]))
                if data["api_key"]
                else None
            )
            stated = (
                selectors.StatedClassification(data["category"], data["complexity"])
                if data["category"]
                else None
            )
            try:
                result = selectors.policy_dry_run(
                    org=request.org,
                    messages=[ChatMessage(role="user", content=data["prompt"])],
                    api_key=api_key,
                    policy_name=data["policy"] or None,
                    requested_model=data["model"].strip() or AUTO,
                    classification=stated,
                    max_tokens=data["max_tokens"],
                )
            except (NotFound, NotPermitted):
                raise
            except ApplicationError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
        if result is None:
            status = 400
    context = {"nav": NAV, "form": form, "result": result}
    return render(request, "gateway/policies/dry_run.html", context, status=status)
