"""The gateway's ``/api/v1/`` routes (key-authenticated DRF views)."""

from django.urls import URLPattern, path

from .apis import RequestDetailApi, RequestListApi

urlpatterns: list[URLPattern] = [
    path("requests", RequestListApi.as_view(), name="api_requests"),
    path("requests/<str:request_id>", RequestDetailApi.as_view(), name="api_request"),
]
