"""An organization's data export and account deletion, through HTTP.

Calls go over real HTTP to the sandbox upstream (the texts in the log are real gateway output);
the dashboard is driven with Django's test client, and once with the live ASGI server to prove
the export streams there.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import httpx
import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from asgiref.sync import async_to_sync
from django.apps import apps
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from apps.accounts import services as account_services
from apps.accounts.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
)
from apps.dashboard.models import NewsletterSubscription
from apps.gateway import byok
from apps.gateway.models import ProviderKey, RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from apps.wallet.templatetags.money import usd
from llmwise.csv_export import StreamingDownload
from tests.conftest import Personas
from tests.factories import PASSWORD, UserFactory
from tests.gateway.conftest import LiveGateway, live_gateway, sandbox  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

EXPORT = reverse("dashboard:org_export")
DELETE = reverse("dashboard:account_delete")
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FUNDS = 5_000_000


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> None:  # noqa: F811
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url


def _fund(org: Organization, note: str = "privacy tests") -> Wallet:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note=note)
    wallet.refresh_from_db()
    return wallet


def _key(org: Organization, user: User, **kwargs: Any) -> str:
    return account_services.api_key_create(org=org, name="k", created_by=user, **kwargs).secret


def _chat(secret: str, content: str) -> dict[str, Any]:
    response = Client().post(
        CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 30},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.content
    return {"request_id": response["x-request-id"], "text": response.json()["choices"][0]}


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def _csv(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive.read(name).decode())))


def _every_row(*, sessions: bool = True) -> str:
    """Every row of every table (ours, allauth's, Django's admin log and, unless told otherwise,
    the sessions: a request may touch its own), as text."""
    return "\n".join(
        f"{model._meta.label} {row!r}"
        for model in apps.get_models()
        if sessions or model._meta.label != "sessions.Session"
        for row in model._default_manager.all().values()
    )


# --- data export --------------------------------------------------------------------------------
def test_owner_downloads_the_request_log_and_ledger_as_a_zip(personas: Personas) -> None:
    org = personas.org
    wallet = _fund(org)
    kept = _chat(_key(org, personas.owner), "Zqexport prompt about tides")
    private = _chat(_key(org, personas.owner, zero_retention=True), "Zqprivate never stored")
    # Another organization's traffic must not appear in Acme's export.
    _fund(personas.other_org)
    globex = _chat(_key(personas.other_org, personas.outsider), "Zqglobex prompt")

    response = personas.client(personas.owner).post(EXPORT, {"org": org.pk})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    assert re.fullmatch(
        r'attachment; filename="llmwise-export-acme-\d{8}-\d{6}\.zip"',
        response["Content-Disposition"],
    )
    assert "no-store" in response["Cache-Control"]
    archive = zipfile.ZipFile(io.BytesIO(_body(response)))
    assert archive.testzip() is None
    assert archive.namelist() == ["manifest.json", "requests.csv", "ledger.csv"]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["organization"] == {"id": org.pk, "name": "Acme", "slug": org.slug}

    requests = {row["request_id"]: row for row in _csv(archive, "requests.csv")}
    assert set(requests) == set(
        RequestLog.objects.filter(organization=org).values_list("request_id", flat=True)
    )
    assert {kept["request_id"], private["request_id"]} <= set(requests)
    assert globex["request_id"] not in requests
    assert "Zqexport prompt about tides" in requests[kept["request_id"]]["prompt"]
    assert requests[kept["request_id"]]["completion"] == kept["text"]["message"]["content"]
    assert requests[private["request_id"]]["zero_retention"] == "true"
    assert requests[private["request_id"]]["prompt"] == ""
    log = RequestLog.objects.get(request_id=kept["request_id"])
    assert requests[kept["request_id"]]["cost_micros"] == str(log.cost_micros)

    ledger = _csv(archive, "ledger.csv")
    wallet.refresh_from_db()
    assert len(ledger) == LedgerEntry.objects.filter(organization=org).count() == 3
    assert sum(int(row["amount_micros"]) for row in ledger) == wallet.balance_micros
    assert {row["kind"] for row in ledger} == {"adjustment", "charge"}
    assert b"Zqglobex" not in archive.read("requests.csv") + archive.read("ledger.csv")

    event = AuditEvent.objects.get(organization=org, action="organization.export")
    assert event.actor == personas.owner


def test_admins_export_members_are_refused(personas: Personas) -> None:
    assert personas.client(personas.admin).post(EXPORT, {"org": personas.org.pk}).status_code == 200
    response = personas.client(personas.member).post(EXPORT, {"org": personas.org.pk})
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(
        action="organization.export", actor=personas.member
    ).exists()


@pytest.mark.parametrize("org", ["acme", "", "not-a-number", "999999"])
def test_an_outsider_cannot_export_another_organization(personas: Personas, org: str) -> None:
    _fund(personas.org)
    _chat(_key(personas.org, personas.owner), "Zqsecret of acme")
    value = str(personas.org.pk) if org == "acme" else org
    response = personas.client(personas.outsider).post(EXPORT, {"org": value})
    assert response.status_code == 404
    assert b"Zqsecret" not in response.content
    assert not AuditEvent.objects.filter(action="organization.export").exists()


def test_export_is_a_post_and_needs_a_login(personas: Personas) -> None:
    assert personas.client(personas.owner).get(EXPORT).status_code == 405
    response = Client().post(EXPORT, {"org": personas.org.pk})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_settings_page_offers_the_export_to_admins_only(personas: Personas) -> None:
    settings_url = reverse("dashboard:settings")
    page = personas.client(personas.owner).get(settings_url).content.decode()
    assert f'action="{EXPORT}"' in page
    assert f'name="org" value="{personas.org.pk}"' in page
    assert DELETE in page
    member_page = personas.client(personas.member).get(settings_url).content.decode()
    assert f'action="{EXPORT}"' not in member_page
    assert DELETE in member_page


def test_a_download_is_pulled_chunk_by_chunk_under_asgi() -> None:
    """Django's StreamingHttpResponse would list() a sync iterator whole before an ASGI server
    sends a byte; ours pulls one chunk per send."""
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        for n in range(5):
            pulled.append(n)
            yield b"chunk %d;" % n

    response = StreamingDownload(chunks())

    async def read() -> list[tuple[bytes, int]]:
        seen = []
        async for part in response:
            seen.append((part, len(pulled)))
        return seen

    seen = async_to_sync(read)()
    assert seen == [(b"chunk %d;" % n, n + 1) for n in range(5)]


@pytest.mark.django_db(transaction=True)
def test_the_export_streams_from_the_asgi_server(
    personas: Personas,
    live_gateway: LiveGateway,  # noqa: F811
) -> None:
    org = personas.org
    _fund(org)
    secret = _key(org, personas.owner)
    ids = {_chat(secret, f"Zqlive prompt {n}")["request_id"] for n in range(3)}
    client = Client()
    client.force_login(personas.owner)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    with httpx.Client(base_url=live_gateway.url, cookies=cookies, timeout=30) as http:
        page = http.get("/dashboard/settings/")
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None
        with http.stream(
            "POST", EXPORT, data={"csrfmiddlewaretoken": token[1], "org": org.pk}
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/zip"
            body = b"".join(r.iter_bytes())
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert {row["request_id"] for row in _csv(archive, "requests.csv")} == ids
    assert len(_csv(archive, "ledger.csv")) == 4  # the grant and three charges


# --- account deletion ---------------------------------------------------------------------------
def _dana(personas: Personas) -> dict[str, Any]:
    """Dana: her own workspace full of data, and an admin seat in Acme."""
    dana = UserFactory(email="dana.zq@privacy.test", name="Dana Zqname")
    EmailAddress.objects.create(user=dana, email="dana.alt.zq@privacy.test", verified=True)
    SocialAccount.objects.create(
        user=dana, provider="github", uid="zq-4711", extra_data={"login": "danazqgh"}
    )
    workspace = account_services.organization_create_personal(user=dana)
    wallet = _fund(workspace, note="goodwill for dana.zq@privacy.test")
    secret = _key(workspace, dana)
    calls = [_chat(secret, f"Zqdelete prompt {n}: my card ends 4242") for n in range(2)]
    byok_secret = "sk-" + "zqbyok" * 6
    byok.provider_key_set(org=workspace, actor=dana, provider="mistral", secret=byok_secret)
    account_services.invitation_create(org=workspace, actor=dana, email="friend.zq@else.test")
    hold = wallet_services.wallet_reserve(
        wallet=wallet, amount_micros=1_000, request_id="req_zq_inflight", expires_in=timedelta(1)
    )
    NewsletterSubscription.objects.create(email="dana.zq@privacy.test", token="zq-newsletter")
    # In Acme: invited by the owner, joined as admin, created a key there.
    issued = account_services.invitation_create(
        org=personas.org, actor=personas.owner, email="dana.zq@privacy.test", role=Role.ADMIN
    )
    account_services.invitation_accept(token=issued.token, user=dana)
    acme_key = account_services.api_key_create(org=personas.org, name="dana's", created_by=dana)
    return {
        "user": dana,
        "workspace": workspace,
        "wallet": wallet,
        "secret": secret,
        "calls": calls,
        "byok": byok_secret,
        "hold": hold,
        "acme_key": acme_key.api_key,
    }


def _login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _delete(client: Client, password: str = PASSWORD, **data: str) -> Any:
    return client.post(DELETE, {"password": password, "confirm": "on", **data})


def test_the_page_explains_what_happens(personas: Personas) -> None:
    data = _dana(personas)
    page = _login(data["user"]).get(DELETE)
    assert page.status_code == 200
    html = page.content.decode()
    assert "cannot be undone" in html
    assert "dana.zq&#x27;s workspace" in html  # closed with the account
    data["wallet"].refresh_from_db()
    assert usd(data["wallet"].balance_micros) in html  # its remaining credit, not refunded
    assert "not refunded automatically" in html
    assert "Acme" in html  # left


def test_a_wrong_password_deletes_nothing(personas: Personas) -> None:
    data = _dana(personas)
    client = _login(data["user"])
    rows_before = _every_row(sessions=False)

    response = _delete(client, password="not-her-password")

    assert response.status_code == 400
    assert "That password is not correct. Nothing was deleted." in response.content.decode()
    assert _every_row(sessions=False) == rows_before
    assert client.get(reverse("dashboard:overview")).status_code == 200  # still signed in


def test_the_confirmation_box_is_required(personas: Personas) -> None:
    data = _dana(personas)
    client = _login(data["user"])
    response = client.post(DELETE, {"password": PASSWORD})
    assert response.status_code == 400
    assert "Tick the box to confirm." in response.content.decode()
    assert User.objects.filter(pk=data["user"].pk).exists()


def test_deleting_the_account_leaves_no_personal_data_and_balanced_books(
    personas: Personas,
) -> None:
    data = _dana(personas)
    dana, workspace, wallet = data["user"], data["workspace"], data["wallet"]
    other_device = _login(dana)
    client = _login(dana)
    wallet.refresh_from_db()
    balance = wallet.balance_micros
    ledger_before = list(
        LedgerEntry.objects.filter(wallet=wallet)
        .order_by("pk")
        .values_list("pk", "kind", "amount_micros", "balance_after_micros", "request_id")
    )
    logs_before = list(
        RequestLog.objects.filter(organization=workspace)
        .order_by("pk")
        .values_list("request_id", "cost_micros", "prompt_tokens", "completion_tokens")
    )
    globex_before = list(AuditEvent.objects.filter(organization=personas.other_org).values())
    completions = [call["text"]["message"]["content"] for call in data["calls"]]
    assert all(completions)

    response = _delete(client)

    assert response.status_code == 200
    assert "Your account is deleted" in response.content.decode()
    # Signed out here and on the other device (its stored session is gone); the account too.
    assert not Session.objects.filter(session_key=other_device.session.session_key).exists()
    for device in (client, other_device):
        page = device.get(reverse("dashboard:overview"))
        assert page.status_code == 302
        assert page["Location"].startswith("/accounts/login/")
    assert not User.objects.filter(pk=dana.pk).exists()

    # No personal data, text or secret anywhere in the database.
    everything = _every_row().lower()
    for needle in [
        "dana.zq",
        "dana.alt.zq",
        "Dana Zqname",
        "danazqgh",
        "Zqdelete prompt",
        "friend.zq@else.test",
        data["byok"],
        *completions,
    ]:
        assert needle.lower() not in everything, needle

    # The workspace is closed: keys dead, secrets and texts gone, money kept and balanced.
    workspace.refresh_from_db()
    assert workspace.name == "Closed organization"
    assert workspace.slug.startswith("closed-")
    assert workspace.zero_retention
    assert not Membership.objects.filter(organization=workspace).exists()
    assert not ApiKey.objects.filter(organization=workspace, revoked_at=None).exists()
    assert not ProviderKey.objects.filter(organization=workspace).exists()
    assert not Invitation.objects.filter(organization=workspace).exists()
    refused = Client().post(
        CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {data['secret']}",
    )
    assert refused.status_code == 401
    logs = RequestLog.objects.filter(organization=workspace).order_by("pk")
    assert [
        (log.request_id, log.cost_micros, log.prompt_tokens, log.completion_tokens) for log in logs
    ] == logs_before
    assert all(log.prompt is None and log.completion == "" for log in logs)
    assert Reservation.objects.get(pk=data["hold"].pk).status == Reservation.Status.RELEASED
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (balance, 0)
    entries = LedgerEntry.objects.filter(wallet=wallet).order_by("pk")
    assert [
        (e.pk, e.kind, e.amount_micros, e.balance_after_micros, e.request_id) for e in entries
    ] == ledger_before
    placeholder = AuditEvent.objects.get(organization=workspace, action="organization.close").data[
        "by"
    ]
    assert placeholder.startswith("deleted-user-")
    assert entries.get(kind="adjustment").note == f"goodwill for {placeholder}"
    assert all(entry.actor_id is None for entry in entries)
    _audit_ok()

    # Acme goes on without her: her membership ended, her traces carry the placeholder.
    assert set(Membership.objects.filter(organization=personas.org).values_list("role", flat=True))
    left = AuditEvent.objects.get(organization=personas.org, action="member.account_deleted")
    assert left.data == {"user": placeholder, "role": "admin"}
    invited = AuditEvent.objects.get(organization=personas.org, action="invitation.create")
    assert invited.data["email"] == placeholder
    created = AuditEvent.objects.get(
        organization=personas.org, action="api_key.create", target=f"api_key:{data['acme_key'].pk}"
    )
    assert (created.actor_id, created.actor_label) == (None, placeholder)
    assert ApiKey.objects.get(pk=data["acme_key"].pk).revoked_at is None  # Acme's key, Acme's call
    # Another tenant is untouched.
    assert (
        list(AuditEvent.objects.filter(organization=personas.other_org).values()) == globex_before
    )


def test_the_only_owner_of_a_team_must_hand_it_over_first(personas: Personas) -> None:
    owner = personas.owner
    secret = _key(personas.org, owner)
    _fund(personas.org)
    _chat(secret, "Zqteam prompt")
    client = _login(owner)
    page = client.get(DELETE).content.decode()
    assert "First, hand over what you own" in page
    rows_before = _every_row(sessions=False)

    response = _delete(client)

    assert response.status_code == 400
    assert "You are the only owner of Acme" in response.content.decode()
    assert _every_row(sessions=False) == rows_before

    # After transferring ownership to the admin, the owner may go; Acme continues as it was.
    admin_membership = Membership.objects.get(organization=personas.org, user=personas.admin)
    transfer = client.post(reverse("dashboard:transfer_ownership", args=[admin_membership.pk]))
    assert transfer.status_code == 302
    assert _delete(client).status_code == 200
    assert not User.objects.filter(pk=owner.pk).exists()
    org = Organization.objects.get(pk=personas.org.pk)
    assert org.name == "Acme"
    assert Membership.objects.get(organization=org, user=personas.admin).role == Role.OWNER
    assert ApiKey.objects.get(organization=org, name="k").revoked_at is None
    assert RequestLog.objects.get(organization=org).prompt is not None  # Acme's data stays
    _audit_ok()


def test_an_account_without_a_password_must_set_one_first(personas: Personas) -> None:
    user = UserFactory(email="social.zq@privacy.test")
    user.set_unusable_password()
    user.save()
    account_services.organization_create_personal(user=user)
    response = _delete(_login(user), password="anything")
    assert response.status_code == 400
    assert "no password yet" in response.content.decode()
    assert User.objects.filter(pk=user.pk).exists()


def test_password_guesses_are_rate_limited(personas: Personas, settings: Any) -> None:
    settings.ACCOUNT_RATE_LIMITS = {"reauthenticate": "2/m/user"}
    user = UserFactory(email="guessed.zq@privacy.test")
    account_services.organization_create_personal(user=user)
    client = _login(user)
    assert _delete(client, password="guess-1").status_code == 400
    assert _delete(client, password="guess-2").status_code == 400
    response = _delete(client)  # even the right password, once limited
    assert response.status_code == 429
    assert "Too many attempts" in response.content.decode()
    assert User.objects.filter(pk=user.pk).exists()


def test_account_deletion_needs_a_login_and_the_csrf_token(personas: Personas) -> None:
    for method in ("get", "post"):
        response = getattr(Client(), method)(DELETE)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.member)
    assert _delete(client).status_code == 403
    assert User.objects.filter(pk=personas.member.pk).exists()
