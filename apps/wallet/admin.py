"""Read-only admin: money moves only through the services (and ``grant_credits``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import CreditPurchase, LedgerEntry, Reservation, Wallet


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = ("organization", "balance_micros", "reserved_micros", "spent_micros")
    search_fields = ("organization__slug", "organization__name")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "organization", "kind", "amount_micros", "request_id", "note")
    list_filter = ("kind",)
    search_fields = ("organization__slug", "request_id", "external_ref")


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "organization", "request_id", "amount_micros", "status")
    list_filter = ("status",)
    search_fields = ("request_id",)


@admin.register(CreditPurchase)
class CreditPurchaseAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "public_id", "organization", "amount_micros", "status")
    list_filter = ("status",)
    search_fields = ("public_id", "stripe_checkout_session_id", "stripe_payment_intent_id")
