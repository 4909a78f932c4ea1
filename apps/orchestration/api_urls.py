"""Orchestration's ``/api/v1/`` routes (API-key authenticated async views)."""

from django.urls import URLPattern, path

from . import apis

urlpatterns: list[URLPattern] = [
    path("compare", apis.compare, name="api_compare"),
    path("blend", apis.blend, name="api_blend"),
    path("judge", apis.judge, name="api_judge"),
    path("orchestrations/<str:request_id>", apis.run_detail, name="api_orchestration"),
]
