"""The wallet API: balance for API-key holders. The org comes from the key, never the client."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey

from . import selectors


class WalletApi(APIView):
    """Available, reserved and lifetime-spent credit of the calling key's organization."""

    @extend_schema_serializer(component_name="Wallet")
    class OutputSerializer(serializers.Serializer):
        object = serializers.CharField()
        organization = serializers.CharField()
        currency = serializers.CharField()
        available_micros = serializers.IntegerField()
        reserved_micros = serializers.IntegerField()
        balance_micros = serializers.IntegerField()
        lifetime_spent_micros = serializers.IntegerField()
        available_usd = serializers.CharField()
        reserved_usd = serializers.CharField()
        balance_usd = serializers.CharField()
        lifetime_spent_usd = serializers.CharField()

    @extend_schema(responses=OutputSerializer, summary="Credit balance of the key's organization")
    def get(self, request: Request) -> Response:
        key = request.auth
        assert isinstance(key, ApiKey)  # noqa: S101 - ApiKeyAuthentication sets it
        summary = selectors.wallet_summary(org=key.organization)
        data = {
            "object": "wallet",
            "organization": key.organization.slug,
            "currency": "usd",
            "available_micros": summary.available_micros,
            "reserved_micros": summary.reserved_micros,
            "balance_micros": summary.balance_micros,
            "lifetime_spent_micros": summary.spent_micros,
            "available_usd": summary.usd("available_micros"),
            "reserved_usd": summary.usd("reserved_micros"),
            "balance_usd": summary.usd("balance_micros"),
            "lifetime_spent_usd": summary.usd("spent_micros"),
        }
        return Response(self.OutputSerializer(data).data)
