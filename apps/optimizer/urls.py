"""Dashboard routes of the optimizer, mounted at /dashboard/recommendations/ (``dashboard:``)."""

from django.urls import URLPattern, path

from . import views

urlpatterns: list[URLPattern] = [
    path("", views.recommendations, name="recommendations"),
    path("run/", views.run_now, name="recommendations_run"),
    path("settings/", views.settings_update, name="recommendations_settings"),
    path("<int:recommendation_id>/", views.recommendation_detail, name="recommendation"),
    path("<int:recommendation_id>/apply/", views.recommendation_apply, name="recommendation_apply"),
    path(
        "<int:recommendation_id>/revert/",
        views.recommendation_revert,
        name="recommendation_revert",
    ),
    path(
        "<int:recommendation_id>/dismiss/",
        views.recommendation_dismiss,
        name="recommendation_dismiss",
    ),
    path("replays/", views.replay_create, name="replay_create"),
    path("replays/<int:run_id>/", views.replay_detail, name="replay"),
    path("replays/<int:run_id>/confirm/", views.replay_confirm, name="replay_confirm"),
    path("replays/<int:run_id>/cancel/", views.replay_cancel, name="replay_cancel"),
]
