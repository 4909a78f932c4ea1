"""The gateway's ``/api/v1/`` routes (key-authenticated DRF views)."""

from django.urls import URLPattern, path

from .apis import ProviderHealthApi, RequestDetailApi, RequestListApi
from .policy_apis import RoutingDryRunApi

urlpatterns: list[URLPattern] = [
    path("health/providers", ProviderHealthApi.as_view(), name="api_health_providers"),
    path("requests", RequestListApi.as_view(), name="api_requests"),
    path("requests/<str:request_id>", RequestDetailApi.as_view(), name="api_request"),
    path("routing/dry-run", RoutingDryRunApi.as_view(), name="api_routing_dry_run"),
]
