"""The playground pages, included by the dashboard under ``playground/`` (names join
``dashboard:``)."""

from django.urls import URLPattern, path

from . import views

urlpatterns: list[URLPattern] = [
    path("", views.playground, name="playground"),
    path("runs/<str:request_id>/", views.run_detail, name="orchestration_run"),
    path(
        "sandbox/providers/<str:provider>/",
        views.sandbox_provider,
        name="playground_sandbox_provider",
    ),
]
