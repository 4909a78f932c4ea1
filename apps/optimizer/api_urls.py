"""The optimizer's ``/api/v1/`` routes (key-authenticated DRF views)."""

from django.urls import URLPattern, path

from .apis import RecommendationListApi

urlpatterns: list[URLPattern] = [
    path("recommendations", RecommendationListApi.as_view(), name="api_recommendations"),
]
