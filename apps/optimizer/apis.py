"""``GET /api/v1/recommendations``: the calling key's organization's recommendations.

The organization comes from the key, never from the client: another organization's
recommendations are never listed. Read-only: applying and dismissing are dashboard actions
(admins and owners), because they change routing for everyone in the organization.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey

from . import selectors
from .models import Recommendation

MICROS_PER_USD = 1_000_000


def recommendation_data(rec: Recommendation) -> dict[str, Any]:
    """One recommendation as the API shows it (money in micro-USD, and USD for reading)."""
    return {
        "object": "recommendation",
        "id": rec.pk,
        "kind": rec.kind,
        "target": rec.target,
        "status": rec.status,
        "title": rec.title,
        "payload": rec.payload,
        "evidence": rec.evidence,
        "estimated_monthly_saving_micros": rec.monthly_saving_micros,
        "estimated_monthly_saving_usd": f"{rec.monthly_saving_micros / MICROS_PER_USD:.2f}",
        "saving_percent": rec.saving_percent,
        "confidence": rec.confidence,
        "applied_policy_version": rec.applied_policy_version.number
        if rec.applied_policy_version is not None
        else None,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


class RecommendationSerializer(serializers.Serializer):
    object = serializers.CharField()
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=Recommendation.Kind.choices)
    target = serializers.CharField()
    status = serializers.ChoiceField(choices=Recommendation.Status.choices)
    title = serializers.CharField()
    payload = serializers.DictField(help_text="What to change.")
    evidence = serializers.DictField(help_text="The numbers the recommendation rests on.")
    estimated_monthly_saving_micros = serializers.IntegerField()
    estimated_monthly_saving_usd = serializers.CharField()
    saving_percent = serializers.FloatField(allow_null=True)
    confidence = serializers.FloatField(help_text="0 to 1.")
    applied_policy_version = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class RecommendationListApi(APIView):
    """The organization's recommendations, largest estimated saving first."""

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(
            choices=Recommendation.Status.choices,
            default=Recommendation.Status.NEW,
            help_text="Default: the current ones (new).",
        )
        kind = serializers.ChoiceField(choices=Recommendation.Kind.choices, required=False)

    @extend_schema(
        operation_id="recommendations_list",
        parameters=[FilterSerializer],
        responses=inline_serializer(
            name="RecommendationList",
            fields={
                "object": serializers.CharField(),
                "data": RecommendationSerializer(many=True),
            },
        ),
        summary="List the optimizer's recommendations",
    )
    def get(self, request: Request) -> Response:
        key = request.auth
        assert isinstance(key, ApiKey)  # noqa: S101 - ApiKeyAuthentication sets it
        params = self.FilterSerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        query = params.validated_data
        recs = selectors.recommendations_of(org=key.organization, statuses=(query["status"],))
        if "kind" in query:
            recs = recs.filter(kind=query["kind"])
        return Response({"object": "list", "data": [recommendation_data(r) for r in recs]})
