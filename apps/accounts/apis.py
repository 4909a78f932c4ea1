"""Small API endpoints of the accounts app."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import ApiKey


class KeyInfoApi(APIView):
    """Who am I? The key and organization that authenticated this request."""

    class OutputSerializer(serializers.Serializer):
        organization = serializers.CharField()
        key_name = serializers.CharField()
        key_prefix = serializers.CharField()
        allowed_models = serializers.ListField(child=serializers.CharField())
        rpm_limit = serializers.IntegerField(allow_null=True)
        tpm_limit = serializers.IntegerField(allow_null=True)
        spend_cap_micros = serializers.IntegerField(allow_null=True)
        expires_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(responses=OutputSerializer, summary="Describe the calling API key")
    def get(self, request: Request) -> Response:
        key = request.auth
        assert isinstance(key, ApiKey)  # noqa: S101 - ApiKeyAuthentication sets it
        data = {
            "organization": key.organization.slug,
            "key_name": key.name,
            "key_prefix": key.prefix,
            "allowed_models": key.allowed_models,
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "spend_cap_micros": key.spend_cap_micros,
            "expires_at": key.expires_at,
        }
        return Response(self.OutputSerializer(data).data)
