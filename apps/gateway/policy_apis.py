"""``POST /api/v1/routing/dry-run``: which routing policy, rule and chain a request would get.

Nothing is sent upstream and nothing is charged. The organization and the pinned policy come from
the calling key; a policy named in the body must be one of that organization's (else 404).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey

from . import policy_selectors as selectors
from .providers.base import ChatMessage
from .routing.policies import AUTO, CATEGORIES, COMPLEXITIES, POLICY_NAME_MAX_CHARS

DRY_RUN_MESSAGES_MAX = 200
DRY_RUN_TEXT_MAX_CHARS = 100_000
MESSAGE_ROLES = ("system", "developer", "user", "assistant")


class RoutingDryRunApi(APIView):
    """Evaluate the routing policies for a prompt without calling a model."""

    class MessageSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=MESSAGE_ROLES)
        content = serializers.CharField(max_length=DRY_RUN_TEXT_MAX_CHARS, allow_blank=True)

    class InputSerializer(serializers.Serializer):
        prompt = serializers.CharField(
            required=False, max_length=DRY_RUN_TEXT_MAX_CHARS, help_text="One user message."
        )
        messages = serializers.ListField(
            child=serializers.DictField(),
            required=False,
            min_length=1,
            max_length=DRY_RUN_MESSAGES_MAX,
            help_text="Or a conversation, as in chat completions (text content).",
        )
        model = serializers.CharField(default=AUTO, max_length=100)
        policy = serializers.CharField(
            required=False,
            max_length=POLICY_NAME_MAX_CHARS,
            help_text="As a request would name it.",
        )
        category = serializers.ChoiceField(
            choices=CATEGORIES, required=False, help_text="Skip the classifier: state it."
        )
        complexity = serializers.ChoiceField(choices=COMPLEXITIES, required=False)
        max_tokens = serializers.IntegerField(required=False, min_value=1)

        def validate_messages(self, value: list[dict[str, Any]]) -> list[ChatMessage]:
            parsed = []
            for index, item in enumerate(value):
                message = RoutingDryRunApi.MessageSerializer(data=item)
                if not message.is_valid():
                    field, errors = next(iter(message.errors.items()))
                    raise serializers.ValidationError({f"{index}.{field}": errors})
                parsed.append(ChatMessage(**message.validated_data))
            return parsed

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if ("prompt" in attrs) == ("messages" in attrs):
                raise serializers.ValidationError({"prompt": "Give either prompt or messages."})
            if ("category" in attrs) != ("complexity" in attrs):
                raise serializers.ValidationError(
                    {"category": "State both category and complexity, or neither."}
                )
            return attrs

    OUTPUT_SCHEMA = inline_serializer(
        name="RoutingDryRun",
        fields={
            "object": serializers.CharField(),
            "requested_model": serializers.CharField(),
            "prompt_tokens": serializers.IntegerField(),
            "policy": serializers.JSONField(allow_null=True),
            "classification": serializers.JSONField(allow_null=True),
            "decision": serializers.JSONField(allow_null=True),
            "summary": serializers.CharField(),
        },
    )

    @extend_schema(
        operation_id="routing_dry_run",
        request=InputSerializer,
        responses=OUTPUT_SCHEMA,
        summary="Dry-run the routing policies for a prompt",
        description=(
            "Selects the policy as a real request would (`policy` named in the body, else the "
            "key's pinned policy, else the organization's default), classifies the prompt "
            "(unless `category` and `complexity` are given) and returns the matching rule and "
            "the model chain. Nothing is called or charged."
        ),
    )
    def post(self, request: Request) -> Response:
        key = request.auth
        assert isinstance(key, ApiKey)  # noqa: S101 - ApiKeyAuthentication sets it
        params = self.InputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        messages = data.get("messages") or [ChatMessage(role="user", content=data["prompt"])]
        stated = (
            selectors.StatedClassification(data["category"], data["complexity"])
            if "category" in data
            else None
        )
        result = selectors.policy_dry_run(
            org=key.organization,
            messages=messages,
            api_key=key,
            policy_name=data.get("policy"),
            requested_model=data["model"],
            classification=stated,
            max_tokens=data.get("max_tokens"),
        )
        return Response(result.as_dict())
