"""Routing policies: validation (path and line of every error, nothing saved), versions and
rollback, the single default, key pins, which policy a request runs under, the dry run (page and
API), roles and tenancy, the audit log, and ``extends`` (merging, loops).

Everything goes through the real interfaces — dashboard pages and ``POST /api/v1/routing/dry-run``
over the Django test client, the real classifier — except :func:`policy_route`, a pure function
tested directly where a table of cases reads better than HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, AuditEvent, Organization, User
from apps.gateway.models import (
    ApiKeyPolicyPin,
    CatalogModel,
    RoutingPolicy,
    RoutingPolicyVersion,
)
from apps.gateway.policy_selectors import policy_catalog
from apps.gateway.providers.base import ChatMessage
from apps.gateway.routing.classifier import classify
from apps.gateway.routing.policies import policy_compile, policy_route
from apps.wallet.models import LedgerEntry, Wallet
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

POLICIES = "/dashboard/routing/policies/"
NEW = f"{POLICIES}new/"
DRY_RUN_PAGE = f"{POLICIES}dry-run/"
DRY_RUN_API = "/api/v1/routing/dry-run"

SIMPLE = """\
rules:
  - name: hard code
    when:
      category: [code, math_reasoning]
      complexity: [high]
    model: claude-sonnet-4.5
    fallbacks: [gpt-4.1]
default:
  model: gpt-4o-mini
"""


# --- helpers --------------------------------------------------------------------------------------
def _create(client: Client, name: str, text: str, *, is_default: bool = False) -> Any:
    data = {"name": name, "description": "", "text": text}
    if is_default:
        data["is_default"] = "on"
    return client.post(NEW, data)


def _created(client: Client, org: Organization, name: str, text: str = SIMPLE, **kw: Any) -> Any:
    response = _create(client, name, text, **kw)
    assert response.status_code == 302, _issues(response)
    return RoutingPolicy.objects.get(organization=org, name=name)


def _issues(response: Any) -> list[Any]:
    return list(response.context["issues"]) if response.context else []


def _detail(policy: RoutingPolicy) -> str:
    return f"{POLICIES}{policy.pk}/"


def _save_text(client: Client, policy: RoutingPolicy, text: str, note: str = "") -> Any:
    return client.post(_detail(policy), {"editor": "text", "text": text, "note": note})


def _audit(org: Organization, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(organization=org, action=action).order_by("id"))


def _policy_audit_count(org: Organization) -> int:
    return AuditEvent.objects.filter(organization=org, action__startswith="routing_policy.").count()


def _key(org: Organization, owner: User, name: str = "backend") -> tuple[ApiKey, str]:
    issued = account_services.api_key_create(org=org, name=name, created_by=owner)
    return issued.api_key, issued.secret


def _dry_run(secret: str, **body: Any) -> Any:
    return Client().post(
        DRY_RUN_API,
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


# --- validation -----------------------------------------------------------------------------------
INVALID = [
    pytest.param(
        "rules:\n  - when:\n      category: [code]\n    model: gpt-4.1\n  - model: gpt-9000\n",
        "rules[1].model",
        5,
        "unknown model 'gpt-9000'",
        id="unknown-model",
    ),
    pytest.param(
        "rules:\n  - when:\n      category:\n        - code\n        - cooking\n"
        "    model: gpt-4.1\n",
        "rules[0].when.category[1]",
        5,
        "unknown category 'cooking'",
        id="unknown-category",
    ),
    pytest.param(
        "rules:\n  - when: {complexity: [extreme]}\n    model: gpt-4.1\n",
        "rules[0].when.complexity[0]",
        2,
        "unknown complexity 'extreme'",
        id="unknown-complexity",
    ),
    pytest.param(
        "default:\n  model: gpt-4.1\n  fallbacks: [gpt-4o, gpt-4o-mini, claude-haiku-4.5]\n",
        "default.fallbacks",
        3,
        "the chain has 4 models",
        id="chain-too-long",
    ),
    pytest.param(
        "max_price_per_request_usd: cheap\n",
        "max_price_per_request_usd",
        1,
        "must be a number of USD",
        id="price-not-a-number",
    ),
    pytest.param(
        "prefer_byok: true\nrules:\n  model: gpt-4.1\n",
        "rules",
        2,
        "must be a list of rules, not a mapping",
        id="rules-not-a-list",
    ),
    pytest.param(
        'prefer_byok: "yes"\n', "prefer_byok", 1, "must be true or false", id="bool-as-string"
    ),
    pytest.param(
        "latency_budget_ms: 0\n",
        "latency_budget_ms",
        1,
        "whole number of milliseconds",
        id="latency-zero",
    ),
    pytest.param(
        "rules:\n  - modle: gpt-4.1\n", "rules[0].modle", 2, "unknown key", id="misspelt-key"
    ),
    pytest.param(
        "default:\n  model: gpt-4.1\ndefault:\n  model: gpt-4o\n",
        "default",
        3,
        "duplicate key",
        id="duplicate-key",
    ),
    pytest.param(
        "rules:\n  - model: gpt-4.1\n    fallbacks: [gpt-4o\ndefault:\n  model: gpt-4o\n",
        "",
        4,
        "not valid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        '{\n  "default": {"model": "gpt-4.1"},\n}\n', "", 3, "not valid JSON", id="json-syntax"
    ),
    pytest.param(
        '{\n  "default": {\n    "model": "gpt-4.1",\n    "fallbacks": ["nope-1"]\n  }\n}\n',
        "default.fallbacks[0]",
        4,
        "unknown model 'nope-1'",
        id="json-unknown-model",
    ),
    pytest.param(
        "allowed_providers: [openai, acme]\n",
        "allowed_providers[1]",
        1,
        "unknown provider 'acme'",
        id="unknown-provider",
    ),
    pytest.param(
        "default:\n  model: gpt-4.1\n  fallbacks:\n    - auto\n",
        "default.fallbacks[0]",
        4,
        "'auto' cannot be a fallback",
        id="auto-as-fallback",
    ),
    pytest.param(
        "rules:\n  - model: claude-sonnet-4.5\n    fallbacks: [claude-sonnet-4-5]\n",
        "rules[0].fallbacks[0]",
        3,
        "already in this chain",
        id="alias-duplicates-model",
    ),
    pytest.param(
        "allowed_providers: [openai]\nrules:\n  - when: {category: [code]}\n"
        "    model: claude-sonnet-4.5\n",
        "rules[0].model",
        4,
        "served by anthropic, which allowed_providers excludes",
        id="provider-excluded",
    ),
    pytest.param(
        "rules: []\nextends: nobody\n",
        "extends",
        2,
        "there is no policy named 'nobody'",
        id="extends-unknown",
    ),
    pytest.param(
        "default: &d\n  model: gpt-4.1\nrules:\n  - *d\n",
        "rules[0]",
        4,
        "anchors and aliases are not supported",
        id="yaml-alias",
    ),
    pytest.param("- gpt-4.1\n", "", 1, "must be a mapping", id="not-a-mapping"),
    pytest.param("   \n", "", None, "the document is empty", id="empty"),
]


@pytest.mark.parametrize(("text", "path", "line", "message"), INVALID)
def test_invalid_document_is_refused_with_path_and_line_and_nothing_saved(
    personas: Personas, settings: Any, text: str, path: str, line: int | None, message: str
) -> None:
    settings.GATEWAY_MESH_MAX_CHAIN = 3
    client = personas.client(personas.admin)
    response = _create(client, "broken", text)
    assert response.status_code == 400
    first = _issues(response)[0]
    assert (first.path, first.line) == (path, line)
    assert message in first.message
    html = response.content.decode()
    assert "nothing was saved" in html
    if line is not None:
        assert f"line {line}</strong>" in html
        # The submitted text is shown with the error next to its line.
        assert f'id="line-{line}"' in html
    assert not RoutingPolicy.objects.exists()
    assert not RoutingPolicyVersion.objects.exists()
    assert _policy_audit_count(personas.org) == 0


def test_every_problem_is_reported_in_reading_order(personas: Personas) -> None:
    text = "bogus: 1\nrules:\n  - when: {category: [cod]}\n    model: gpt-9\n"
    response = _create(personas.client(personas.admin), "broken", text)
    assert response.status_code == 400
    found = [(issue.path, issue.line) for issue in _issues(response)]
    assert found == [("bogus", 1), ("rules[0].when.category[0]", 3), ("rules[0].model", 4)]


def test_bad_edit_keeps_the_current_version(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    response = _save_text(client, policy, SIMPLE.replace("gpt-4o-mini", "gpt-4o-maxi"))
    assert response.status_code == 400
    assert _issues(response)[0].path == "default.model"
    assert _issues(response)[0].line == 9
    policy.refresh_from_db()
    assert policy.versions.count() == 1
    assert policy.current_version is not None
    assert policy.current_version.document["default"]["model"] == "gpt-4o-mini"
    assert _audit(personas.org, "routing_policy.update") == []


def test_invalid_name_and_taken_name(personas: Personas) -> None:
    client = personas.client(personas.admin)
    response = _create(client, "Not A Slug", SIMPLE)
    assert response.status_code == 400
    _created(client, personas.org, "main")
    response = _create(client, "main", SIMPLE)
    assert response.status_code == 400
    assert "already a policy named" in response.content.decode()
    assert RoutingPolicy.objects.count() == 1


# --- create, edit, versions, rollback -------------------------------------------------------------
def test_create_stores_json_and_shows_yaml_and_json(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    assert policy.current_version is not None
    assert policy.current_version.number == 1
    assert policy.current_version.document == {
        "rules": [
            {
                "name": "hard code",
                "when": {"category": ["code", "math_reasoning"], "complexity": ["high"]},
                "model": "claude-sonnet-4.5",
                "fallbacks": ["gpt-4.1"],
            }
        ],
        "default": {"model": "gpt-4o-mini"},
    }
    yaml_page = client.get(_detail(policy)).content.decode()
    assert "model: claude-sonnet-4.5" in yaml_page
    json_page = client.get(_detail(policy) + "?format=json").content.decode()
    assert "&quot;model&quot;: &quot;claude-sonnet-4.5&quot;" in json_page
    (event,) = _audit(personas.org, "routing_policy.create")
    assert event.actor == personas.admin
    assert event.target == "routing_policy:main"
    assert event.data == {"version": 1, "is_default": False}


def test_json_text_is_accepted(personas: Personas) -> None:
    client = personas.client(personas.admin)
    document = {"default": {"model": "auto"}, "max_price_per_request_usd": 0.05}
    policy = _created(client, personas.org, "from-json", json.dumps(document, indent=2))
    assert policy.current_version is not None
    assert policy.current_version.document == document


def test_edits_add_versions_and_never_change_old_ones(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    response = _save_text(client, policy, SIMPLE.replace("gpt-4o-mini", "gpt-4o"), "bigger")
    assert response.status_code == 302
    # The settings form edits the common fields and keeps the rules.
    response = client.post(
        _detail(policy),
        {
            "editor": "fields",
            "description": "Production traffic",
            "extends": "",
            "applies_to": "all",
            "default_model": "gpt-4o",
            "default_fallbacks": "gpt-4.1, gpt-4o-mini",
            "max_price_per_request_usd": "0.05",
            "allowed_providers": ["openai", "anthropic"],
            "prefer_byok": "on",
            "latency_budget_ms": "8000",
            "note": "limits",
        },
    )
    assert response.status_code == 302, response.context["fields_form"].errors
    # Saving the same text again is not a new version.
    same = client.get(_detail(policy)).context["text_form"]["text"].value()
    assert _save_text(client, policy, same).status_code == 302

    policy.refresh_from_db()
    versions = {v.number: v for v in policy.versions.all()}
    assert sorted(versions) == [1, 2, 3]
    assert policy.current_version == versions[3]
    assert policy.description == "Production traffic"
    assert versions[1].document["default"] == {"model": "gpt-4o-mini"}
    assert versions[2].document["default"] == {"model": "gpt-4o"}
    assert versions[2].note == "bigger"
    assert versions[3].document == {
        "rules": versions[1].document["rules"],
        "default": {"model": "gpt-4o", "fallbacks": ["gpt-4.1", "gpt-4o-mini"]},
        "applies_to": "all",
        "max_price_per_request_usd": 0.05,
        "allowed_providers": ["openai", "anthropic"],
        "prefer_byok": True,
        "latency_budget_ms": 8000,
    }
    updates = _audit(personas.org, "routing_policy.update")
    assert [event.data.get("version") for event in updates] == [2, 3]
    assert updates[1].data["description"] == {"from": "", "to": "Production traffic"}


def test_settings_form_errors_land_on_their_field(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    response = client.post(
        _detail(policy),
        {"editor": "fields", "applies_to": "auto", "default_model": "gpt-unknown"},
    )
    assert response.status_code == 400
    assert (
        "unknown model 'gpt-unknown'" in response.context["fields_form"].errors["default_model"][0]
    )
    assert policy.versions.count() == 1


def test_rollback_adds_a_copy_of_the_old_version(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    _save_text(client, policy, SIMPLE.replace("gpt-4o-mini", "gpt-4o"))
    history = client.get(f"{_detail(policy)}versions/")
    html = history.content.decode()
    assert '<span class="del">-  model: gpt-4o-mini</span>' in html
    assert '<span class="add">+  model: gpt-4o</span>' in html

    response = client.post(f"{_detail(policy)}versions/1/rollback/")
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.current_version is not None
    assert policy.current_version.number == 3
    assert policy.current_version.note == "rollback to version 1"
    assert policy.current_version.document == policy.versions.get(number=1).document
    (event,) = _audit(personas.org, "routing_policy.rollback")
    assert event.data == {"version": 3, "restored_version": 1, "previous_version": 2}

    # Rolling back to the current version is refused, and adds nothing.
    response = client.post(f"{_detail(policy)}versions/3/rollback/", follow=True)
    assert "already the current version" in response.content.decode()
    assert policy.versions.count() == 3
    assert client.post(f"{_detail(policy)}versions/9/rollback/").status_code == 404


def test_rollback_revalidates_the_old_document(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    _save_text(client, policy, SIMPLE.replace("gpt-4o-mini", "gpt-4o"))
    CatalogModel.objects.filter(pk="gpt-4o-mini").update(enabled=False)
    response = client.post(f"{_detail(policy)}versions/1/rollback/", follow=True)
    assert "version 1 no longer validates: unknown model &#x27;gpt-4o-mini&#x27;" in (
        response.content.decode()
    )
    assert policy.versions.count() == 2
    assert _audit(personas.org, "routing_policy.rollback") == []


# --- default, delete ------------------------------------------------------------------------------
def test_one_default_per_organization(personas: Personas) -> None:
    client = personas.client(personas.admin)
    first = _created(client, personas.org, "first", is_default=True)
    second = _created(client, personas.org, "second", is_default=True)
    first.refresh_from_db()
    assert (first.is_default, second.is_default) == (False, True)

    assert client.post(f"{_detail(first)}default/", {"default": "1"}).status_code == 302
    defaults = RoutingPolicy.objects.filter(organization=personas.org, is_default=True)
    assert list(defaults.values_list("name", flat=True)) == ["first"]
    (event,) = _audit(personas.org, "routing_policy.set_default")
    assert event.data == {"default": "first", "previous": "second"}

    assert client.post(f"{_detail(first)}default/", {"default": "0"}).status_code == 302
    assert not defaults.exists()
    assert _audit(personas.org, "routing_policy.set_default")[-1].data == {
        "default": None,
        "previous": "first",
    }
    # The database holds the rule too, whatever code writes.
    RoutingPolicy.objects.filter(pk__in=[first.pk, second.pk]).update(is_default=False)
    RoutingPolicy.objects.filter(pk=first.pk).update(is_default=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        RoutingPolicy.objects.filter(pk=second.pk).update(is_default=True)


def test_delete_removes_versions_and_pins(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main", is_default=True)
    key, _secret = _key(personas.org, personas.owner)
    client.post(f"{_detail(policy)}pins/", {"api_key": key.pk, "action": "pin"})
    response = client.post(f"{_detail(policy)}delete/")
    assert response.status_code == 302
    assert not RoutingPolicy.objects.exists()
    assert not RoutingPolicyVersion.objects.exists()
    assert not ApiKeyPolicyPin.objects.exists()
    (event,) = _audit(personas.org, "routing_policy.delete")
    assert event.data == {"was_default": True, "versions": 1, "unpinned_keys": [key.prefix]}


# --- key pins -------------------------------------------------------------------------------------
def test_pin_and_unpin_a_key(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    other = _created(client, personas.org, "other")
    key, _secret = _key(personas.org, personas.owner)
    page = client.get(_detail(policy)).content.decode()
    assert f'id="key-{key.prefix}"' in page

    assert client.post(f"{_detail(policy)}pins/", {"api_key": key.pk}).status_code == 302
    assert ApiKeyPolicyPin.objects.get(api_key=key).policy == policy
    assert "<strong>this policy</strong>" in client.get(_detail(policy)).content.decode()
    # Pinning to another policy moves the pin (one per key).
    client.post(f"{_detail(other)}pins/", {"api_key": key.pk, "action": "pin"})
    assert ApiKeyPolicyPin.objects.get(api_key=key).policy == other
    client.post(f"{_detail(other)}pins/", {"api_key": key.pk, "action": "unpin"})
    assert not ApiKeyPolicyPin.objects.exists()
    events = _audit(personas.org, "routing_policy.pin")
    assert [(e.data["policy"], e.data["previous"]) for e in events] == [
        ("main", None),
        ("other", "main"),
        (None, "other"),
    ]
    assert events[0].target == f"api_key:{key.prefix}"


def test_pins_refuse_revoked_and_foreign_keys(personas: Personas) -> None:
    client = personas.client(personas.admin)
    policy = _created(client, personas.org, "main")
    revoked, _secret = _key(personas.org, personas.owner, "old")
    account_services.api_key_revoke(org=personas.org, actor=personas.owner, key_id=revoked.pk)
    response = client.post(f"{_detail(policy)}pins/", {"api_key": revoked.pk}, follow=True)
    assert "is revoked" in response.content.decode()
    foreign, _secret = _key(personas.other_org, personas.outsider, "theirs")
    assert client.post(f"{_detail(policy)}pins/", {"api_key": foreign.pk}).status_code == 404
    assert client.post(f"{_detail(policy)}pins/", {"api_key": "x"}).status_code == 404
    assert not ApiKeyPolicyPin.objects.exists()
    assert _audit(personas.org, "routing_policy.pin") == []


# --- which policy a request runs under ------------------------------------------------------------
def test_request_name_beats_key_pin_beats_org_default(personas: Personas) -> None:
    client = personas.client(personas.admin)
    for name, model in [("named", "gpt-4.1"), ("pinned", "gpt-4o"), ("fallback", "gpt-5-mini")]:
        _created(client, personas.org, name, f"default:\n  model: {model}\n")
    pinned_key, pinned_secret = _key(personas.org, personas.owner, "pinned")
    _plain_key, plain_secret = _key(personas.org, personas.owner, "plain")
    policy = RoutingPolicy.objects.get(name="pinned")
    client.post(f"{_detail(policy)}pins/", {"api_key": pinned_key.pk})

    def run(secret: str, **body: Any) -> tuple[str | None, str | None, str | None]:
        response = _dry_run(secret, prompt="Hello there", **body)
        assert response.status_code == 200, response.json()
        data = response.json()
        if data["policy"] is None:
            return None, None, data["decision"]
        return data["policy"]["name"], data["policy"]["source"], data["decision"]["model"]

    assert run(plain_secret) == (None, None, None)  # nothing pinned, no default
    fallback = RoutingPolicy.objects.get(name="fallback")
    client.post(f"{_detail(fallback)}default/", {"default": "1"})
    assert run(plain_secret) == ("fallback", "org_default", "gpt-5-mini")
    assert run(pinned_secret) == ("pinned", "api_key", "gpt-4o")
    assert run(pinned_secret, policy="named") == ("named", "request", "gpt-4.1")
    assert run(plain_secret, policy="named") == ("named", "request", "gpt-4.1")


# --- dry run --------------------------------------------------------------------------------------
ROUTED = """\
rules:
  - name: translations
    when: {category: [translation]}
    model: mistral-small
    fallbacks: [gpt-4o-mini]
  - name: hard code
    when: {category: [code], complexity: [high]}
    model: claude-sonnet-4.5
    fallbacks: [gpt-4.1, gpt-5]
default:
  model: auto
max_price_per_request_usd: 0.05
"""


def test_dry_run_api_classifies_with_the_real_classifier(personas: Personas) -> None:
    _created(personas.client(personas.admin), personas.org, "main", ROUTED, is_default=True)
    _key_row, secret = _key(personas.org, personas.owner)
    prompt = "Translate to French: good morning"
    expected = classify([ChatMessage(role="user", content=prompt)])
    assert expected.category == "translation"  # the premise of this test

    response = _dry_run(secret, prompt=prompt)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "routing.dry_run"
    assert data["classification"] == {
        "category": "translation",
        "complexity": expected.complexity,
        "source": "classifier",
    }
    assert data["policy"] == {
        "name": "main",
        "version": 1,
        "source": "org_default",
        "lineage": ["main"],
    }
    decision = data["decision"]
    assert decision["rule_index"] == 0
    assert decision["rule"] == "main.rules[0] (translations)"
    assert decision["chain"] == ["mistral-small", "gpt-4o-mini"]
    assert decision["max_price_micros"] == 50_000
    assert "mistral-small → gpt-4o-mini" in data["summary"]


def test_dry_run_with_stated_classification_and_price_cap(personas: Personas) -> None:
    _created(personas.client(personas.admin), personas.org, "main", ROUTED, is_default=True)
    _key_row, secret = _key(personas.org, personas.owner)
    # 1,000 output tokens: claude-sonnet-4.5 may cost $0.015 + prompt, within $0.05; gpt-5 $0.01.
    response = _dry_run(
        secret,
        messages=[{"role": "user", "content": "x"}],
        category="code",
        complexity="high",
        max_tokens=1000,
    )
    decision = response.json()["decision"]
    assert decision["chain"] == ["claude-sonnet-4.5", "gpt-4.1", "gpt-5"]
    assert decision["rule_index"] == 1
    # The catalog default output allowance of claude-sonnet-4.5 would cost more than $0.05.
    response = _dry_run(secret, prompt="x", category="code", complexity="high", max_tokens=4000)
    decision = response.json()["decision"]
    assert decision["chain"] == ["gpt-4.1", "gpt-5"]
    assert decision["excluded"] == [
        {
            "model": "claude-sonnet-4.5",
            "reason": "may cost up to $0.060015, over the $0.05 per-request maximum",
        }
    ]
    # No rule matches: the default, "auto", lets the auto-router pick within the limits.
    response = _dry_run(secret, prompt="x", category="qa", complexity="low")
    assert response.json()["decision"]["chain"] == ["auto"]
    assert response.json()["decision"]["rule_index"] is None


def test_dry_run_api_bad_input(personas: Personas) -> None:
    _key_row, secret = _key(personas.org, personas.owner)
    _created(personas.client(personas.outsider), personas.other_org, "theirs")
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({}, 400, "invalid_request", "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "", "prompt"),
        ({"prompt": "x", "category": "code"}, 400, "invalid_request", "category"),
        ({"prompt": "x", "category": "cooking", "complexity": "low"}, 400, "", "category"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "", "messages.0.role"),
        ({"prompt": "x", "policy": "nobody"}, 404, "policy_not_found", "policy"),
        # Another organization's policy is not found, with no data.
        ({"prompt": "x", "policy": "theirs"}, 404, "policy_not_found", "policy"),
    ]
    for body, status, code, param in cases:
        response = _dry_run(secret, **body)
        assert response.status_code == status, (body, response.json())
        error = response.json()["error"]
        assert error["param"] == param, body
        if code:
            assert error["code"] == code
        assert "theirs" not in json.dumps(response.json()).replace("'theirs'", "")
    anonymous = Client().post(DRY_RUN_API, {"prompt": "x"}, content_type="application/json")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"


def test_dry_run_costs_nothing_even_without_credit(personas: Personas) -> None:
    _created(personas.client(personas.admin), personas.org, "main", ROUTED, is_default=True)
    _key_row, secret = _key(personas.org, personas.owner)
    entries = LedgerEntry.objects.count()
    wallet = Wallet.objects.filter(organization=personas.org).first()
    assert wallet is None or wallet.balance_micros == 0
    response = _dry_run(secret, prompt="Write a haiku about routers", max_tokens=10)
    assert response.status_code == 200
    assert LedgerEntry.objects.count() == entries
    assert not Wallet.objects.filter(organization=personas.org, reserved_micros__gt=0).exists()


def test_dry_run_page(personas: Personas) -> None:
    _created(personas.client(personas.admin), personas.org, "main", ROUTED, is_default=True)
    key, _secret = _key(personas.org, personas.owner)
    # Members may dry-run: it changes nothing.
    client = personas.client(personas.member)
    assert client.get(DRY_RUN_PAGE).status_code == 200
    response = client.post(
        DRY_RUN_PAGE,
        {"prompt": "Translate to French: good morning", "model": "auto", "api_key": key.pk},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "main.rules[0] (translations)" in html
    assert "<code>mistral-small</code> → <code>gpt-4o-mini</code>" in html
    assert "(classifier)" in html
    assert "org_default" in html

    response = client.post(
        DRY_RUN_PAGE,
        {"prompt": "x", "model": "auto", "category": "code", "complexity": "high"},
    )
    assert "<code>claude-sonnet-4.5</code>" in response.content.decode()
    assert "(stated)" in response.content.decode()

    # Half a classification, or a policy of another organization: a form error, no result.
    response = client.post(DRY_RUN_PAGE, {"prompt": "x", "model": "auto", "category": "code"})
    assert response.status_code == 400
    _created(personas.client(personas.outsider), personas.other_org, "theirs")
    response = client.post(DRY_RUN_PAGE, {"prompt": "x", "model": "auto", "policy": "theirs"})
    assert response.status_code == 400
    assert response.context["result"] is None
    foreign, _secret = _key(personas.other_org, personas.outsider, "foreign")
    response = client.post(DRY_RUN_PAGE, {"prompt": "x", "model": "auto", "api_key": foreign.pk})
    assert response.status_code == 400


# --- roles and tenancy ----------------------------------------------------------------------------
def test_member_reads_but_cannot_write(personas: Personas) -> None:
    policy = _created(personas.client(personas.admin), personas.org, "main")
    key, _secret = _key(personas.org, personas.owner)
    member = personas.client(personas.member)
    assert member.get(POLICIES).status_code == 200
    page = member.get(_detail(policy))
    assert page.status_code == 200
    assert 'id="policy-document"' in page.content.decode()  # read-only text, no forms
    assert 'id="policy-text"' not in page.content.decode()
    assert member.get(f"{_detail(policy)}versions/").status_code == 200
    writes = [
        (NEW, {"name": "x", "text": SIMPLE}),
        (_detail(policy), {"editor": "text", "text": SIMPLE.replace("mini", "")}),
        (f"{_detail(policy)}default/", {"default": "1"}),
        (f"{_detail(policy)}pins/", {"api_key": key.pk}),
        (f"{_detail(policy)}versions/1/rollback/", {}),
        (f"{_detail(policy)}delete/", {}),
    ]
    for url, data in writes:
        assert member.post(url, data).status_code == 403, url
    assert member.get(NEW).status_code == 403
    policy.refresh_from_db()
    assert policy.versions.count() == 1
    assert not policy.is_default
    assert not ApiKeyPolicyPin.objects.exists()
    assert _policy_audit_count(personas.org) == 1  # the admin's create


def test_outsider_gets_404_and_no_data(personas: Personas) -> None:
    policy = _created(personas.client(personas.admin), personas.org, "secret-sauce")
    outsider = personas.client(personas.outsider)
    listing = outsider.get(POLICIES)
    assert listing.status_code == 200
    assert "secret-sauce" not in listing.content.decode()
    for url in [_detail(policy), f"{_detail(policy)}versions/"]:
        assert outsider.get(url).status_code == 404
    for url in [
        _detail(policy),
        f"{_detail(policy)}default/",
        f"{_detail(policy)}pins/",
        f"{_detail(policy)}versions/1/rollback/",
        f"{_detail(policy)}delete/",
    ]:
        assert outsider.post(url, {"editor": "text", "text": SIMPLE}).status_code == 404, url
    assert RoutingPolicy.objects.filter(pk=policy.pk).exists()
    assert _policy_audit_count(personas.other_org) == 0


def test_anonymous_is_sent_to_login(personas: Personas) -> None:
    response = Client().get(POLICIES)
    assert response.status_code == 302
    assert "/login" in response["Location"]


# --- extends --------------------------------------------------------------------------------------
def test_extends_merges_child_over_parent(personas: Personas) -> None:
    client = personas.client(personas.admin)
    _created(
        client,
        personas.org,
        "base",
        "rules:\n  - when: {category: [code]}\n    model: gpt-4.1\n"
        "default:\n  model: gpt-4o-mini\nmax_price_per_request_usd: 1\nprefer_byok: true\n",
    )
    _created(
        client,
        personas.org,
        "child",
        "extends: base\nrules:\n  - when: {category: [translation]}\n    model: mistral-small\n"
        "max_price_per_request_usd: 0.02\n",
        is_default=True,
    )
    _key_row, secret = _key(personas.org, personas.owner)

    def decision(category: str) -> dict[str, Any]:
        response = _dry_run(secret, prompt="x", category=category, complexity="low", max_tokens=100)
        assert response.json()["policy"]["lineage"] == ["child", "base"]
        return response.json()["decision"]

    assert decision("translation")["chain"] == ["mistral-small"]  # the child's own rule
    code = decision("code")  # the parent's rule, after the child's
    assert (code["chain"], code["rule_index"], code["rule"]) == (["gpt-4.1"], 1, "base.rules[0]")
    qa = decision("qa")  # the parent's default; the child's price cap and the parent's BYOK flag
    assert (qa["chain"], qa["max_price_micros"], qa["prefer_byok"]) == (
        ["gpt-4o-mini"],
        20_000,
        True,
    )

    # Editing the parent changes the child at once (resolved when selected, not frozen).
    base = RoutingPolicy.objects.get(name="base")
    _save_text(client, base, "default:\n  model: gpt-5-nano\n")
    assert decision("qa")["chain"] == ["gpt-5-nano"]

    # A parent that others extend cannot be deleted.
    response = client.post(f"{_detail(base)}delete/", follow=True)
    assert "is extended by &#x27;child&#x27;" in response.content.decode()
    assert RoutingPolicy.objects.filter(name="base").exists()


def test_extends_loops_are_refused(personas: Personas) -> None:
    client = personas.client(personas.admin)
    response = _create(client, "selfish", "extends: selfish\n")
    assert response.status_code == 400
    assert _issues(response)[0].message == "extends loops: selfish → selfish"

    base = _created(client, personas.org, "base", "default:\n  model: gpt-4o\n")
    _created(client, personas.org, "middle", "extends: base\n")
    _created(client, personas.org, "top", "extends: middle\n")
    response = _save_text(client, base, "default:\n  model: gpt-4o\nextends: top\n")
    assert response.status_code == 400
    (issue,) = _issues(response)
    assert (issue.path, issue.line) == ("extends", 3)
    assert issue.message == "extends loops: base → top → middle → base"
    assert base.versions.count() == 1
    assert _audit(personas.org, "routing_policy.update") == []


def test_extends_depth_is_limited(personas: Personas) -> None:
    client = personas.client(personas.admin)
    _created(client, personas.org, "p0", "default:\n  model: gpt-4o\n")
    for level in range(1, 6):
        _created(client, personas.org, f"p{level}", f"extends: p{level - 1}\n")
    response = _create(client, "p6", "extends: p5\n")
    assert response.status_code == 400
    assert "nested deeper than 5 policies" in _issues(response)[0].message
    assert not RoutingPolicy.objects.filter(name="p6").exists()


# --- evaluation (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stated:
    category: str
    complexity: str


def test_policy_route_filters_and_orders_the_chain() -> None:
    catalog = policy_catalog()
    document = {
        "applies_to": "all",
        "rules": [
            {"when": {"requested_model": ["gpt-4o"]}, "model": "gpt-4.1"},
            {
                "when": {"category": ["code"]},
                "model": "claude-sonnet-4-5",  # an alias
                "fallbacks": ["gpt-4.1", "gemini-2.5-pro"],
            },
        ],
        "allowed_providers": ["openai", "anthropic"],
        "prefer_byok": True,
    }
    policy = policy_compile(name="p", document=document)
    code = _Stated("code", "high")

    # A rule on the requested model (applies_to: all routes explicit models too).
    decision = policy_route(
        policy=policy, classification=code, requested_model="gpt-4o", catalog=catalog
    )
    assert decision.chain == ("gpt-4.1",)

    decision = policy_route(
        policy=policy, classification=code, requested_model="auto", catalog=catalog
    )
    assert decision.chain == ("claude-sonnet-4.5", "gpt-4.1")
    assert [e.model for e in decision.excluded] == ["gemini-2.5-pro"]

    # prefer_byok: models of providers with the org's own key first, order otherwise kept.
    decision = policy_route(
        policy=policy,
        classification=code,
        requested_model="auto",
        catalog=catalog,
        byok_providers={"openai"},
    )
    assert decision.chain == ("gpt-4.1", "claude-sonnet-4.5")

    # No classification (not computed): rules on the category do not match; no default → as asked.
    decision = policy_route(
        policy=policy, classification=None, requested_model="auto", catalog=catalog
    )
    assert (decision.model, decision.rule_index) == ("auto", None)

    # applies_to: auto (the default) keeps an explicitly requested model, within the limits.
    auto_only = policy_compile(name="q", document={"allowed_providers": ["anthropic"]})
    decision = policy_route(
        policy=auto_only, classification=code, requested_model="gpt-4o", catalog=catalog
    )
    assert decision.model is None
    assert decision.excluded[0].reason == "openai is not an allowed provider"
