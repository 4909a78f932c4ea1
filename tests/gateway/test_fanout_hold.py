"""One reservation for a fan-out, carved into per-call holds (the orchestration building block)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway import calls
from apps.gateway.models import RequestLog
from apps.gateway.providers.base import ChatMessage
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]


def test_two_calls_share_one_fan_out_hold(
    personas: Personas, settings: Any, sandbox: SandboxServer
) -> None:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="fan-out")
    key = account_services.api_key_create(org=personas.org, name="k", created_by=None).api_key
    key = type(key).objects.select_related("organization").get(pk=key.pk)
    chats = [
        calls.ChatInput(
            model=model, messages=(ChatMessage(role="user", content="Hello"),), max_tokens=30
        )
        for model in ("gpt-4o-mini", "claude-haiku-4.5")
    ]

    async def run() -> list[calls.ChatOutcome]:
        total = sum([await calls.hold_estimate(api_key=key, chat=chat) for chat in chats])
        parent = await wallet_services_reserve(wallet, total)
        outcomes = await asyncio.gather(
            *[
                calls.chat_call(
                    api_key=key,
                    chat=chat,
                    request_id=f"fan.{index}",
                    endpoint="test.fanout",
                    parent_hold=parent,
                    parent_request_id="fan",
                )
                for index, chat in enumerate(chats)
            ]
        )
        await release(parent)
        return list(outcomes)

    outcomes = asyncio.run(run())
    spent = sum(outcome.cost_micros for outcome in outcomes)
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000 - spent, 0)
    assert set(RequestLog.objects.values_list("parent_request_id", flat=True)) == {"fan"}
    assert set(Reservation.objects.values_list("request_id", "status")) == {
        ("fan", "released"),
        ("fan.0", "settled"),
        ("fan.1", "settled"),
    }
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


async def wallet_services_reserve(wallet: Wallet, amount: int) -> Reservation:
    from asgiref.sync import sync_to_async

    return await sync_to_async(wallet_services.wallet_reserve)(
        wallet=wallet, amount_micros=amount, request_id="fan", expires_in=timedelta(minutes=5)
    )


async def release(parent: Reservation) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(wallet_services.reservation_release)(reservation=parent)
