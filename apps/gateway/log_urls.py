"""Usage & logs pages, included by the dashboard under ``usage/`` (names join ``dashboard:``)."""

from django.urls import URLPattern, path

from . import log_views

urlpatterns: list[URLPattern] = [
    path("", log_views.request_list, name="usage"),
    path("requests.csv", log_views.request_csv, name="usage_csv"),
    path("requests/<str:request_id>/", log_views.request_detail, name="usage_request"),
]
