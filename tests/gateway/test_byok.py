"""BYOK: organizations' own provider keys — encrypted at rest, managed from the dashboard,
verified with a real call, and used by the gateway without reserving or charging credit.

Every provider call goes over real HTTP to a sandbox upstream that also records which key it
received, so the tests can prove the stored key is the one sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from apps.accounts import services as account_services
from apps.accounts.models import AuditEvent
from apps.gateway import byok
from apps.gateway.encryption import current_key_id, decrypt, encrypt
from apps.gateway.models import CatalogModel, ProviderKey, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.sandbox import SandboxServer
from apps.gateway.sandbox.app import SandboxApp
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway, wait_for_log

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

PAGE = "dashboard:provider_keys"
MODEL = "gpt-4o-mini"  # an OpenAI model in the seeded catalog
OTHER_PROVIDER_MODEL = "claude-haiku-4.5"  # Anthropic: no BYOK key in these tests
SECRET = "sk-proj-byok-canary-7c1e9d5a2b4f8e06"
OTHER_SECRET = "sk-proj-byok-second-0a9b8c7d6e5f4321"
INVALID_SECRET = "invalid-byok-canary-31f0e6a9d2c4b7e5"  # the sandbox refuses keys like this
OLD_KEYS = ["old-encryption-key-" + "a" * 40]
NEW_KEYS = ["new-encryption-key-" + "b" * 40]


class RecordingSandbox(SandboxApp):
    """The sandbox upstream, noting the key each request carried (any provider's header)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_control"):
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            key = (
                headers.get("authorization", "").removeprefix("Bearer ")
                or headers.get("x-api-key", "")
                or headers.get("x-goog-api-key", "")
            )
            self.keys.append(key)
        await super().__call__(scope, receive, send)


@pytest.fixture(scope="module")
def upstream() -> Iterator[SandboxServer]:
    server = SandboxServer(app=RecordingSandbox()).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, upstream: SandboxServer) -> Iterator[RecordingSandbox]:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = upstream.base_url
    app = upstream.app
    assert isinstance(app, RecordingSandbox)
    app.keys.clear()
    yield app
    httpx.delete(f"{upstream.base_url}/_control/faults").raise_for_status()


@pytest.fixture
def received(_providers_on_sandbox: RecordingSandbox) -> list[str]:
    """The keys the sandbox upstream received during this test, in order."""
    return _providers_on_sandbox.keys


def _store(personas: Personas, secret: str = SECRET, provider: str = "openai") -> ProviderKey:
    return byok.provider_key_set(
        org=personas.org, actor=personas.owner, provider=provider, secret=secret
    )


def _api_key(personas: Personas) -> str:
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret


def _wallet(personas: Personas, micros: int = 0) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    if micros:
        wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="test funds")
    wallet.refresh_from_db()
    return wallet


def _chat(api_key: str, model: str = MODEL, **fields: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi there"}], **fields}
    return Client().post(
        "/v1/chat/completions",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _raw_rows() -> list[tuple[Any, ...]]:
    """Every column of every stored key, as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ProviderKey._meta.db_table}")  # noqa: S608
        return list(cursor.fetchall())


# --- encryption -------------------------------------------------------------------------------
def test_secret_is_encrypted_at_rest_and_decrypts(personas: Personas) -> None:
    key = _store(personas)
    rows = _raw_rows()
    assert len(rows) == 1
    assert SECRET not in repr(rows)
    assert SECRET[:-4] not in repr(rows)  # not even a prefix of it
    token = ProviderKey.objects.values_list("secret_encrypted", flat=True).get()
    assert decrypt(token=token, key_id=key.encryption_key_id) == SECRET
    assert key.encryption_key_id == current_key_id()
    assert key.suffix == SECRET[-4:]
    assert key.masked == "••••" + SECRET[-4:]
    # The same secret encrypts differently every time (random IV): no equality leaks.
    assert encrypt(SECRET).token != encrypt(SECRET).token
    for event in AuditEvent.objects.values():
        assert SECRET not in repr(event)


def test_encryption_keys_must_be_real_keys(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = ["too-short"]
    with pytest.raises(ImproperlyConfigured, match="at least 32"):
        encrypt("x")
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEYS[0], OLD_KEYS[0]]
    with pytest.raises(ImproperlyConfigured, match="twice"):
        encrypt("x")


def test_rotation_reencrypts_under_the_newest_key(personas: Personas, settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = OLD_KEYS
    old_id = current_key_id()
    _store(personas)
    byok.provider_key_set(
        org=personas.other_org, actor=personas.outsider, provider="mistral", secret=OTHER_SECRET
    )
    assert set(ProviderKey.objects.values_list("encryption_key_id", flat=True)) == {old_id}

    # Rotation starts: the new key comes first, the old one still decrypts.
    settings.FIELD_ENCRYPTION_KEYS = NEW_KEYS + OLD_KEYS
    new_id = current_key_id()
    assert new_id != old_id
    for row in ProviderKey.objects.all():
        assert decrypt(token=row.secret_encrypted, key_id=row.encryption_key_id) in (
            SECRET,
            OTHER_SECRET,
        )
    before = dict(ProviderKey.objects.values_list("pk", "secret_encrypted"))

    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert f"Encryption key {new_id}: re-encrypted 2, already current 0" in out.getvalue()
    assert SECRET not in out.getvalue()
    assert OTHER_SECRET not in out.getvalue()
    for row in ProviderKey.objects.all():
        assert row.encryption_key_id == new_id
        assert row.secret_encrypted != before[row.pk]

    # The old key retired: everything still reads.
    settings.FIELD_ENCRYPTION_KEYS = NEW_KEYS
    plain = {
        row.provider: decrypt(token=row.secret_encrypted, key_id=row.encryption_key_id)
        for row in ProviderKey.objects.all()
    }
    assert plain == {"openai": SECRET, "mistral": OTHER_SECRET}
    assert SECRET not in repr(_raw_rows())

    # Idempotent: a second run has nothing to do.
    again = StringIO()
    call_command("rotate_encryption_keys", stdout=again)
    assert "re-encrypted 0, already current 2" in again.getvalue()


def test_rotation_reports_keys_no_configured_key_opens(personas: Personas, settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = OLD_KEYS
    key = _store(personas)
    settings.FIELD_ENCRYPTION_KEYS = NEW_KEYS  # the old key dropped too early
    out = StringIO()
    with pytest.raises(CommandError, match=rf"ids {key.pk}\)"):
        call_command("rotate_encryption_keys", stdout=out)
    assert "failed 1" in out.getvalue()
    assert ProviderKey.objects.get().encryption_key_id != current_key_id()  # left as it was


# --- dashboard --------------------------------------------------------------------------------
def test_owner_adds_a_key_and_sees_it_only_masked(personas: Personas) -> None:
    client = personas.client(personas.owner)
    response = client.post(reverse(PAGE), {"provider": "openai", "secret": SECRET})
    assert response.status_code == 302
    key = ProviderKey.objects.get(organization=personas.org)
    assert (key.provider, key.created_by, key.last_verify_ok) == ("openai", personas.owner, None)

    page = client.get(reverse(PAGE))
    html = page.content.decode()
    assert page.status_code == 200
    assert "••••" + SECRET[-4:] in html
    assert SECRET not in html
    assert SECRET[:-4] not in html
    assert "saved" in html  # the flash message, which names only the masked key
    event = AuditEvent.objects.get(action="provider_key.set")
    assert event.data == {"provider": "openai", "suffix": SECRET[-4:]}
    assert event.actor == personas.owner


def test_admin_replaces_the_key(personas: Personas) -> None:
    first = _store(personas)
    ProviderKey.objects.filter(pk=first.pk).update(last_verify_ok=True)
    client = personas.client(personas.admin)
    response = client.post(reverse(PAGE), {"provider": "openai", "secret": OTHER_SECRET})
    assert response.status_code == 302
    key = ProviderKey.objects.get(organization=personas.org)  # still one key per provider
    assert key.pk == first.pk
    assert key.suffix == OTHER_SECRET[-4:]
    assert key.created_by == personas.admin
    assert key.last_verify_ok is None  # a new key starts unverified
    assert decrypt(token=key.secret_encrypted, key_id=key.encryption_key_id) == OTHER_SECRET
    assert AuditEvent.objects.filter(action="provider_key.replace", actor=personas.admin).exists()


def test_settings_page_links_to_provider_keys(personas: Personas) -> None:
    html = personas.client(personas.member).get(reverse("dashboard:settings")).content.decode()
    assert reverse(PAGE) in html


@pytest.mark.parametrize(
    ("provider", "secret", "message"),
    [
        ("openai", "", "This field is required"),
        ("openai", "sk-short", "too short"),
        ("openai", "sk-proj has spaces in it 12345", "no spaces"),
        ("openai", "lw-" + "x" * 40, "LLMWise API key"),
        ("openai", "s" * 600, "at most 512"),
        ("nosuchprovider", SECRET, "Select a valid choice"),
    ],
)
def test_bad_input_is_refused_and_never_echoed(
    personas: Personas, provider: str, secret: str, message: str
) -> None:
    response = personas.client(personas.owner).post(
        reverse(PAGE), {"provider": provider, "secret": secret}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    if secret:
        assert f'value="{secret}"' not in html
        assert SECRET not in html
    assert not ProviderKey.objects.exists()


def test_member_sees_masked_keys_but_cannot_change_them(personas: Personas) -> None:
    key = _store(personas)
    client = personas.client(personas.member)
    page = client.get(reverse(PAGE))
    assert page.status_code == 200
    html = page.content.decode()
    assert key.masked in html
    assert SECRET not in html
    assert "Verify key" not in html  # no buttons that would answer 403

    assert (
        client.post(reverse(PAGE), {"provider": "openai", "secret": OTHER_SECRET}).status_code
        == 403
    )
    assert client.post(reverse("dashboard:provider_key_delete", args=[key.pk])).status_code == 403
    assert client.post(reverse("dashboard:provider_key_verify", args=[key.pk])).status_code == 403
    after = ProviderKey.objects.get()
    assert (after.suffix, after.last_verified_at) == (SECRET[-4:], None)


def test_outsider_cannot_see_or_touch_another_orgs_key(
    personas: Personas, received: list[str]
) -> None:
    key = _store(personas)
    client = personas.client(personas.outsider)  # owner of another organization
    html = client.get(reverse(PAGE)).content.decode()
    assert key.masked not in html
    assert client.post(reverse("dashboard:provider_key_delete", args=[key.pk])).status_code == 404
    assert client.post(reverse("dashboard:provider_key_verify", args=[key.pk])).status_code == 404
    assert ProviderKey.objects.filter(pk=key.pk, last_verified_at=None).exists()
    assert received == []  # nothing was sent with the key


def test_changes_need_csrf(personas: Personas) -> None:
    key = _store(personas)
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    add = client.post(reverse(PAGE), {"provider": "mistral", "secret": OTHER_SECRET})
    assert add.status_code == 403
    delete = client.post(reverse("dashboard:provider_key_delete", args=[key.pk]))
    assert delete.status_code == 403
    assert list(ProviderKey.objects.values_list("provider", flat=True)) == ["openai"]


def test_remove_key(personas: Personas) -> None:
    key = _store(personas)
    client = personas.client(personas.admin)
    url = reverse("dashboard:provider_key_delete", args=[key.pk])
    assert client.get(url).status_code == 405
    response = client.post(url)
    assert response.status_code == 302
    assert not ProviderKey.objects.exists()
    event = AuditEvent.objects.get(action="provider_key.delete")
    assert event.data == {"provider": "openai", "suffix": SECRET[-4:]}
    assert client.post(url).status_code == 404  # already gone


def test_verify_a_working_key_makes_a_real_call_with_it(
    personas: Personas, received: list[str]
) -> None:
    key = _store(personas)
    client = personas.client(personas.owner)
    response = client.post(reverse("dashboard:provider_key_verify", args=[key.pk]), follow=True)
    assert response.status_code == 200
    assert "OpenAI accepted this key" in response.content.decode()
    assert received == [SECRET]
    key.refresh_from_db()
    assert key.last_verify_ok is True
    assert key.last_verified_at is not None
    assert "works" in response.content.decode()


def test_verify_a_refused_key(personas: Personas, received: list[str]) -> None:
    key = _store(personas, INVALID_SECRET)
    response = personas.client(personas.admin).post(
        reverse("dashboard:provider_key_verify", args=[key.pk]), follow=True
    )
    html = response.content.decode()
    assert "OpenAI refused this key (HTTP 401)" in html
    assert INVALID_SECRET not in html
    assert received == [INVALID_SECRET]
    key.refresh_from_db()
    assert key.last_verify_ok is False
    assert key.last_verified_at is not None


def test_verify_when_the_provider_is_down_records_nothing(
    personas: Personas, upstream: SandboxServer
) -> None:
    key = _store(personas)
    httpx.post(
        f"{upstream.base_url}/_control/faults", json={"provider": "openai", "fault": "http_503"}
    ).raise_for_status()
    result = byok.provider_key_verify(org=personas.org, actor=personas.owner, provider="openai")
    assert result.ok is None
    assert "Could not verify" in result.message
    key.refresh_from_db()
    assert (key.last_verify_ok, key.last_verified_at) == (None, None)


# --- calls ------------------------------------------------------------------------------------
def test_byok_call_charges_nothing_and_logs_the_would_be_cost(
    personas: Personas, received: list[str]
) -> None:
    wallet = _wallet(personas, 0)  # no credit at all
    _store(personas)
    response = _chat(_api_key(personas), max_tokens=50)
    assert response.status_code == 200, response.content
    usage = response.json()["usage"]
    assert received == [SECRET]  # the stored key is what the provider got

    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (0, 0)
    assert not LedgerEntry.objects.exists()
    assert not Reservation.objects.exists()
    log = RequestLog.objects.get(request_id=response["x-request-id"])
    would_be = cost_micros(
        model=CatalogModel.objects.get(pk=MODEL),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
    )
    assert would_be > 0
    assert (log.byok, log.status, log.cost_micros) == (True, "ok", would_be)
    # The client is told what it would have cost and that nothing was charged.
    assert response["x-llmwise-cost-micros"] == "0"
    assert response.json()["llmwise"] | {"route": None, "latency_ms": None} == {
        "cost_micros": would_be,
        "charged_micros": 0,
        "byok": True,
        "route": None,
        "latency_ms": None,
        "usage_estimated": False,
    }
    assert ProviderKey.objects.get().last_used_at is not None
    _audit_ok()


@pytest.mark.django_db(transaction=True)
def test_byok_stream_charges_nothing(
    personas: Personas, received: list[str], live_gateway: LiveGateway
) -> None:
    wallet = _wallet(personas, 0)
    _store(personas)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Stream me a short answer."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {_api_key(personas)}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
        request_id = response.headers["x-request-id"]
    assert "data: [DONE]" in lines
    assert received == [SECRET]
    log = wait_for_log(request_id)
    assert (log.byok, log.status) == (True, "ok")
    assert log.cost_micros > 0
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (0, 0)
    assert not Reservation.objects.exists()
    _audit_ok()


def test_byok_is_per_provider(personas: Personas) -> None:
    _wallet(personas, 0)
    _store(personas)  # OpenAI only
    response = _chat(_api_key(personas), model=OTHER_PROVIDER_MODEL)
    assert response.status_code == 402  # Anthropic still uses our key and the (empty) wallet


def test_refused_byok_key_charges_nothing(personas: Personas, received: list[str]) -> None:
    wallet = _wallet(personas, 1_000_000)
    _store(personas, INVALID_SECRET)
    response = _chat(_api_key(personas))
    assert response.status_code != 200
    assert response.json()["error"]["provider"] == "openai"
    assert INVALID_SECRET not in response.content.decode()
    assert received == [INVALID_SECRET]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000, 0)
    assert not Reservation.objects.exists()
    log = RequestLog.objects.get()
    assert (log.byok, log.http_status, log.error_code, log.cost_micros) == (
        True,
        401,
        "byok_key_invalid",
        0,
    )
    _audit_ok()


def test_refused_byok_key_answers_401_byok_key_invalid(personas: Personas) -> None:
    _wallet(personas, 1_000_000)
    _store(personas, INVALID_SECRET)
    response = _chat(_api_key(personas))
    assert response.status_code == 401, response.content
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("byok_key_invalid", "authentication_error")


def test_changing_the_key_takes_effect_on_the_next_call(
    personas: Personas, received: list[str]
) -> None:
    wallet = _wallet(personas, 1_000_000)
    api_key = _api_key(personas)
    client = personas.client(personas.owner)
    _store(personas)
    assert _chat(api_key).status_code == 200
    client.post(reverse(PAGE), {"provider": "openai", "secret": OTHER_SECRET})
    assert _chat(api_key).status_code == 200
    assert received == [SECRET, OTHER_SECRET]
    wallet.refresh_from_db()
    assert wallet.balance_micros == 1_000_000  # both BYOK

    key = ProviderKey.objects.get()
    client.post(reverse("dashboard:provider_key_delete", args=[key.pk]))
    response = _chat(api_key)
    assert response.status_code == 200
    assert received[-1] != OTHER_SECRET  # our platform key again
    wallet.refresh_from_db()
    assert wallet.balance_micros == 1_000_000 - int(response["x-llmwise-cost-micros"])
    assert list(RequestLog.objects.order_by("id").values_list("byok", flat=True)) == [
        True,
        True,
        False,
    ]
    _audit_ok()


def test_secrets_never_reach_logs_or_responses(
    personas: Personas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = personas.client(personas.owner)
    api_key = _api_key(personas)
    _wallet(personas, 1_000_000)
    bodies = []
    for secret in (SECRET, INVALID_SECRET):
        response = client.post(reverse(PAGE), {"provider": "openai", "secret": secret}, follow=True)
        bodies.append(response.content.decode())
        key = ProviderKey.objects.get()
        verify = client.post(reverse("dashboard:provider_key_verify", args=[key.pk]), follow=True)
        bodies.append(verify.content.decode())
        call = _chat(api_key)
        bodies.append(call.content.decode())
        bodies.append(repr(dict(call.items())))
        bodies.append(
            repr(byok.provider_key_verify(org=personas.org, actor=None, provider="openai"))
        )
    assert caplog.records  # logging was captured at all
    for secret in (SECRET, INVALID_SECRET):
        assert secret not in caplog.text
        assert all(secret not in body for body in bodies)
        for row in RequestLog.objects.values():
            assert secret not in repr(row)
        for event in AuditEvent.objects.values():
            assert secret not in repr(event)
