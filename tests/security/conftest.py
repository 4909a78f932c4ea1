"""Security fixtures: organization A filled with one object of every kind, each carrying a marker
that must never show up for anyone outside A.

Everything is built through the real services (or, for rows only the hot path writes, the same
factories the other suites use), so the sweep sees the data shapes production has.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Model
from django.utils import timezone

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Invitation, Membership, Organization, Role
from apps.gateway import byok, policy_services, rollups
from apps.gateway import services as gateway_services
from apps.gateway.models import ProviderKey, RequestLog, RoutingPolicy
from apps.optimizer import replay as optimizer_replay
from apps.optimizer import services as optimizer_services
from apps.optimizer.models import Recommendation, ReplayRun
from apps.orchestration import services as orchestration_services
from apps.orchestration.models import OrchestrationRun
from apps.wallet import services as wallet_services
from apps.wallet.models import CreditPurchase, Reservation, Wallet
from tests.conftest import Personas
from tests.factories import UserFactory, add_member
from tests.usage_factory import log_row

# Markers of organization A. Chosen so no page of another organization can contain them by chance.
ORG_MARK = "Zqorgmarkx"
KEY_MARK = "Zqkeymarkx"
PROMPT_MARK = "Zqpromptmarkx"
COMPLETION_MARK = "Zqanswermarkx"
POLICY_MARK = "zqpolicymarkx"
INVITE_MARK = "zqinvitemarkx"
MEMBER_MARK = "zqmembermarkx"
BYOK_SECRET = "sk-zqbyokmarkx-0123456789abcdef"
REQUEST_ID = "req_zqrequestmarkx0001"
PURCHASE_ID = "pur_zqpurchasemarkx"
RUN_ID = "req_zqrunmarkx0001"
RECOMMENDATION_MARK = "zqrecommendmarkx"

POLICY_TEXT = "default:\n  model: gpt-4o-mini\n"


@dataclass
class OrgAData:
    """Organization A (the personas' Acme) with one object of every organization-owned kind."""

    org: Organization
    api_key: ApiKey
    api_secret: str
    member: Membership
    invitation: Invitation
    request_log: RequestLog
    provider_key: ProviderKey
    policy: RoutingPolicy
    purchase: CreditPurchase
    reservation: Reservation
    wallet: Wallet
    run: OrchestrationRun
    recommendation: Recommendation
    replay: ReplayRun
    objects: dict[str, Model]

    @property
    def markers(self) -> tuple[str, ...]:
        return (
            ORG_MARK,
            KEY_MARK,
            self.api_key.prefix,
            PROMPT_MARK,
            COMPLETION_MARK,
            POLICY_MARK,
            INVITE_MARK,
            MEMBER_MARK,
            REQUEST_ID,
            PURCHASE_ID,
            RUN_ID,
            RECOMMENDATION_MARK,
            "acme.test",  # the personas' email domain
        )


def org_a_build(personas: Personas) -> OrgAData:
    org, owner = personas.org, personas.owner
    org = account_services.organization_update(org=org, actor=owner, name=f"Acme {ORG_MARK}")
    issued = account_services.api_key_create(org=org, name=f"key {KEY_MARK}", created_by=owner)
    member_user = add_member(org, Role.MEMBER, UserFactory(email=f"{MEMBER_MARK}@acme.test"))
    member = Membership.objects.get(organization=org, user=member_user)
    invitation = account_services.invitation_create(
        org=org, actor=owner, email=f"{INVITE_MARK}@elsewhere.test"
    ).invitation
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=5_000_000, note="tenancy sweep")
    reservation = wallet_services.wallet_reserve(
        wallet=wallet,
        amount_micros=1_000,
        request_id="req_zqholdmarkx",
        expires_in=timedelta(minutes=5),
    )
    log = log_row(
        org,
        api_key=issued.api_key,
        request_id=REQUEST_ID,
        prompt=[{"role": "user", "content": PROMPT_MARK}],
        completion=COMPLETION_MARK,
    )
    rollups.rollups_update()
    provider_key = byok.provider_key_set(
        org=org, actor=owner, provider="mistral", secret=BYOK_SECRET
    )
    policy = policy_services.routing_policy_create(
        org=org, actor=owner, name=POLICY_MARK, description=f"about {POLICY_MARK}", text=POLICY_TEXT
    )
    # A paid purchase, credited the way the verified webhook does it.
    CreditPurchase.objects.create(
        public_id=PURCHASE_ID,
        organization=org,
        wallet=wallet,
        amount_micros=5_000_000,
        stripe_checkout_session_id="cs_test_zqmarkx",
        created_by=owner,
        created_at=timezone.now(),
    )
    purchase = wallet_services.purchase_credit(
        public_id=PURCHASE_ID,
        checkout_session_id="cs_test_zqmarkx",
        payment_intent_id="pi_test_zqmarkx",
        amount_cents=500,
        currency="usd",
    )
    run, _hold = orchestration_services.run_open(
        api_key=issued.api_key,
        request_id=RUN_ID,
        mode="compare",
        endpoint="compare",
        model_ids=["gpt-4o-mini"],
        options={},
        stream=False,
        hold_micros=0,
        timeout_seconds=30,
    )
    gateway_services.org_gateway_settings_update(
        org=org, actor=owner, cache_enabled=True, cache_ttl_seconds=600, cache_fee_micros=7
    )
    optimizer_services.optimizer_settings_update(
        org=org, actor=owner, values={"digest_enabled": True}
    )
    optimizer_run = optimizer_services.optimizer_run(org=org, trigger="manual")
    # The optimizer only recommends over weeks of traffic; a flag-kind row (nothing to apply) is
    # what its run would store, written directly.
    recommendation = Recommendation.objects.create(
        organization=org,
        kind=Recommendation.Kind.RISING_ERRORS,
        target=f"model {RECOMMENDATION_MARK}",
        title=f"Errors rising on {RECOMMENDATION_MARK}",
        fingerprint="0" * 64,
        run=optimizer_run,
    )
    replay = optimizer_replay.replay_create(
        org=org, actor=owner, sample_size=1, policy_document={"default": {"model": "gpt-4o-mini"}}
    )
    wallet.refresh_from_db()
    objects: dict[str, Model] = {
        "optimizer_run": optimizer_run,
        "recommendation": recommendation,
        "replay": replay,
        "run": run,
        "api_key": issued.api_key,
        "member": member,
        "invitation": invitation,
        "request_log": log,
        "provider_key": provider_key,
        "policy": policy,
        "purchase": purchase,
        "reservation": reservation,
        "wallet": wallet,
    }
    return OrgAData(
        org=org,
        api_key=issued.api_key,
        api_secret=issued.secret,
        member=member,
        invitation=invitation,
        request_log=log,
        provider_key=provider_key,
        policy=policy,
        purchase=purchase,
        reservation=reservation,
        wallet=wallet,
        run=run,
        recommendation=recommendation,
        replay=replay,
        objects=objects,
    )


@pytest.fixture
def org_a(personas: Personas, catalog: None) -> OrgAData:
    return org_a_build(personas)


def snapshot(models: list[type[Model]], org: Organization) -> dict[str, list[dict[str, Any]]]:
    """Every row of ``org`` in each model, as plain values (to prove nothing of it changed)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        field = next(
            f.name
            for f in model._meta.get_fields()
            if getattr(f, "related_model", None) is Organization and f.concrete
        )
        out[model._meta.label] = list(
            model._default_manager.filter(**{field: org}).order_by("pk").values()
        )
    return out


# The session's sandbox upstream and fake Stripe, shared with the gateway and wallet suites.
from tests.gateway.conftest import faults, sandbox  # noqa: E402, F401
from tests.wallet.stripe_server import stripe_env, stripe_server  # noqa: E402, F401
