"""The request-log API for API-key holders: what was asked, what it cost, how it was routed.

``GET /api/v1/requests/<request id>`` lets a client reconcile a call it made with what it was
charged; ``GET /api/v1/requests`` lists the organization's calls, newest first. The organization
comes from the key, never from the client: another organization's request is a 404 in our
envelope, with no data.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.wallet.models import format_usd
from llmwise.errors import ApplicationError

from . import selectors
from .models import RequestLog
from .routing import health

REQUESTS_PAGE_DEFAULT = 20
REQUESTS_PAGE_MAX = 100


def _calling_key(request: Request) -> ApiKey:
    key = request.auth
    assert isinstance(key, ApiKey)  # noqa: S101 - ApiKeyAuthentication sets it
    return key


def request_log_data(log: RequestLog, *, include_texts: bool) -> dict[str, Any]:
    """One logged request as the API shows it.

    ``cost_micros`` is the price of the call at the catalog's rates; ``charged_micros`` is what
    left the wallet (zero for BYOK calls, which are logged with their would-be cost). A row
    written under zero retention has no texts to show, and says so.
    """
    zero_retention = log.prompt is None
    charged = 0 if log.byok else log.cost_micros
    data: dict[str, Any] = {
        "object": "request",
        "id": log.request_id,
        "created_at": log.created_at,
        "endpoint": log.endpoint,
        "status": log.status,
        "http_status": log.http_status,
        "error": {"type": log.error_type, "code": log.error_code} if log.error_type else None,
        "requested_model": log.requested_model,
        "model": log.model,
        "provider": log.provider,
        "finish_reason": log.finish_reason,
        "stream": log.stream,
        "api_key": (
            {"name": log.api_key.name, "prefix": log.api_key.prefix}
            if log.api_key is not None
            else None
        ),
        "usage": {
            "prompt_tokens": log.prompt_tokens,
            "completion_tokens": log.completion_tokens,
            "total_tokens": log.prompt_tokens + log.completion_tokens,
            "cached_tokens": log.cached_tokens,
            "reasoning_tokens": log.reasoning_tokens,
            "estimated": log.usage_estimated,
        },
        "cost_micros": log.cost_micros,
        "cost_usd": format_usd(log.cost_micros),
        "charged_micros": charged,
        "charged_usd": format_usd(charged),
        "byok": log.byok,
        "latency_ms": log.latency_ms,
        "upstream_ms": log.upstream_ms,
        "overhead_ms": max(log.latency_ms - log.upstream_ms, 0),
        "route": log.route,
        "zero_retention": zero_retention,
    }
    if include_texts:
        data["prompt"] = None if zero_retention else log.prompt
        data["completion"] = None if zero_retention else log.completion
    return data


class _ErrorSerializer(serializers.Serializer):
    type = serializers.CharField()
    code = serializers.CharField()


class _KeySerializer(serializers.Serializer):
    name = serializers.CharField()
    prefix = serializers.CharField()


class _UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    estimated = serializers.BooleanField()


@extend_schema_serializer(component_name="RequestSummary")
class RequestSummarySerializer(serializers.Serializer):
    object = serializers.CharField()
    id = serializers.CharField()
    created_at = serializers.DateTimeField()
    endpoint = serializers.CharField()
    status = serializers.ChoiceField(choices=RequestLog.Status.choices)
    http_status = serializers.IntegerField()
    error = _ErrorSerializer(allow_null=True)
    requested_model = serializers.CharField()
    model = serializers.CharField()
    provider = serializers.CharField()
    finish_reason = serializers.CharField()
    stream = serializers.BooleanField()
    api_key = _KeySerializer(allow_null=True)
    usage = _UsageSerializer()
    cost_micros = serializers.IntegerField()
    cost_usd = serializers.CharField()
    charged_micros = serializers.IntegerField()
    charged_usd = serializers.CharField()
    byok = serializers.BooleanField()
    latency_ms = serializers.IntegerField()
    upstream_ms = serializers.IntegerField()
    overhead_ms = serializers.IntegerField()
    route = serializers.JSONField()
    zero_retention = serializers.BooleanField()


class RequestDetailApi(APIView):
    """One logged request of the calling key's organization, texts included unless not stored."""

    @extend_schema_serializer(component_name="Request")
    class OutputSerializer(RequestSummarySerializer):
        # The messages as stored (role + content); passed through so no shape is lost.
        prompt = serializers.JSONField(allow_null=True)
        completion = serializers.CharField(allow_null=True)

    @extend_schema(
        operation_id="requests_retrieve",
        responses=OutputSerializer,
        summary="A logged request: usage, cost, route and texts",
        description=(
            "`prompt` and `completion` are null when the request was made under zero retention "
            "(`zero_retention: true`): only metadata was stored. A chat call is billed and "
            "logged just after its answer is sent; asked for in that instant, this waits for "
            "the record (up to 2 s). A request whose provider has not answered yet is "
            "`404 request_in_progress`."
        ),
    )
    def get(self, request: Request, request_id: str) -> Response:
        key = _calling_key(request)
        log = selectors.request_log_booked(org=key.organization, request_id=request_id)
        return Response(self.OutputSerializer(request_log_data(log, include_texts=True)).data)


class RequestListApi(APIView):
    """The calling key's organization's requests, newest first, one page at a time."""

    class FilterSerializer(serializers.Serializer):
        model = serializers.CharField(required=False, max_length=100)
        api_key = serializers.CharField(
            required=False, max_length=16, help_text="A key's prefix (lw-…), as in GET /api/v1/key."
        )
        status = serializers.ChoiceField(choices=RequestLog.Status.choices, required=False)
        byok = serializers.BooleanField(required=False, allow_null=True, default=None)
        date_from = serializers.DateField(required=False, help_text="Inclusive, UTC.")
        date_to = serializers.DateField(required=False, help_text="Inclusive, UTC.")
        limit = serializers.IntegerField(
            min_value=1, max_value=REQUESTS_PAGE_MAX, default=REQUESTS_PAGE_DEFAULT
        )
        cursor = serializers.CharField(required=False, max_length=64)

        def validate_cursor(self, value: str) -> selectors.RequestLogCursor:
            cursor = selectors.RequestLogCursor.decode(value)
            if cursor is None:
                raise serializers.ValidationError("Use the next_cursor of a previous page.")
            return cursor

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            start, end = attrs.get("date_from"), attrs.get("date_to")
            if start and end and start > end:
                raise serializers.ValidationError({"date_to": "date_to is before date_from."})
            return attrs

    # "data" would shadow Serializer.data as a declared field, so the envelope is described
    # here and the rows go through RequestSummarySerializer.
    OUTPUT_SCHEMA = inline_serializer(
        name="RequestList",
        fields={
            "object": serializers.CharField(),
            "data": RequestSummarySerializer(many=True),
            "has_more": serializers.BooleanField(),
            "next_cursor": serializers.CharField(allow_null=True),
        },
    )

    @extend_schema(
        operation_id="requests_list",
        parameters=[FilterSerializer],
        responses=OUTPUT_SCHEMA,
        summary="List logged requests, newest first",
        description=(
            "Pass `next_cursor` back as `cursor` for the next (older) page. Texts are not listed; "
            "GET /api/v1/requests/{id} returns them."
        ),
    )
    def get(self, request: Request) -> Response:
        key = _calling_key(request)
        # A plain dict, not the QueryDict: DRF reads an absent boolean in form-like input as
        # False, which would turn "any" into "not BYOK".
        params = self.FilterSerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        query = params.validated_data
        filters = selectors.RequestLogFilters(
            model=query.get("model"),
            api_key_prefix=query.get("api_key"),
            status=query.get("status"),
            byok=query.get("byok"),
            date_from=query.get("date_from"),
            date_to=query.get("date_to"),
        )
        page = selectors.request_log_page(
            org=key.organization,
            filters=filters,
            limit=query["limit"],
            cursor=query.get("cursor"),
        )
        rows = [request_log_data(log, include_texts=False) for log in page.rows]
        return Response(
            {
                "object": "list",
                "data": RequestSummarySerializer(rows, many=True).data,
                "has_more": page.has_more,
                "next_cursor": page.next_cursor,
            }
        )


# --- provider health --------------------------------------------------------------------------


def provider_health_data(row: health.TargetHealth) -> dict[str, Any]:
    """One provider+model's live health as the API (and the status page) shows it."""
    return {
        "provider": row.provider,
        "model": row.model,
        "state": row.state.value,
        "error_rate": row.error_rate,
        "calls": row.calls,
        "failures": row.errors,
        "latency_ms": {"p50": row.p50_ms, "p95": row.p95_ms},
        "open_until": row.open_until,
        "cooldown_until": row.cooldown_until,
        "last_failure": (
            {"at": row.last_failure_at, "code": row.last_failure_code}
            if row.last_failure_at is not None
            else None
        ),
    }


class HealthUnavailable(ApplicationError):
    status_code = 503
    error_type = "api_error"
    code = "health_unavailable"


class _LatencySerializer(serializers.Serializer):
    p50 = serializers.IntegerField(allow_null=True)
    p95 = serializers.IntegerField(allow_null=True)


class _FailureSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    code = serializers.CharField()


class ProviderHealthApi(APIView):
    """Live health of every model the calling key may use: breaker state, error rate and latency
    over the rolling window, from the gateway's own traffic (all organizations' calls: health is
    about the providers, and no tenant's data is in it)."""

    @extend_schema_serializer(component_name="ProviderHealth")
    class OutputSerializer(serializers.Serializer):
        provider = serializers.CharField()
        model = serializers.CharField()
        state = serializers.ChoiceField(choices=[s.value for s in health.BreakerState])
        error_rate = serializers.FloatField(
            allow_null=True, help_text="Failed share of the calls in the window; null without."
        )
        calls = serializers.IntegerField()
        failures = serializers.IntegerField(help_text="Calls in the window that failed.")
        latency_ms = _LatencySerializer(
            help_text="Of successful calls (time to first byte "
            "for streams), interpolated from a histogram."
        )
        open_until = serializers.DateTimeField(allow_null=True)
        cooldown_until = serializers.DateTimeField(
            allow_null=True, help_text="The provider is skipped until then after sustained 429s."
        )
        last_failure = _FailureSerializer(allow_null=True)

    OUTPUT_SCHEMA = inline_serializer(
        name="ProviderHealthList",
        fields={
            "object": serializers.CharField(),
            "window_seconds": serializers.FloatField(),
            "data": OutputSerializer(many=True),
        },
    )

    @extend_schema(
        operation_id="health_providers",
        responses=OUTPUT_SCHEMA,
        summary="Live health of each provider and model",
        description=(
            "`state`: `closed` (taking traffic), `open` (skipped by failover chains until "
            "`open_until`), `half_open` (one probe call decides). Error rate, call counts and "
            "p50/p95 latency (successful calls) cover the last `window_seconds`."
        ),
    )
    def get(self, request: Request) -> Response:
        key = _calling_key(request)
        try:
            rows = health.catalog_health(allowed_models=key.allowed_models)
        except health.COUNTER_ERRORS as exc:
            raise HealthUnavailable("Provider health is unavailable right now.") from exc
        return Response(
            {
                "object": "list",
                "window_seconds": float(settings.GATEWAY_MESH_WINDOW_SECONDS),
                "data": self.OutputSerializer(
                    [provider_health_data(row) for row in rows], many=True
                ).data,
            }
        )
