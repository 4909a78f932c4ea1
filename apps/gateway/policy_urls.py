"""Routing policies, included by the dashboard under ``routing/policies/`` (names join
``dashboard:``)."""

from django.urls import path

from . import policy_views

urlpatterns = [
    path("", policy_views.policy_list, name="routing_policies"),
    path("new/", policy_views.policy_create, name="routing_policy_create"),
    path("dry-run/", policy_views.policy_dry_run, name="routing_policy_dry_run"),
    path("<int:policy_id>/", policy_views.policy_detail, name="routing_policy"),
    path("<int:policy_id>/versions/", policy_views.policy_versions, name="routing_policy_versions"),
    path(
        "<int:policy_id>/versions/<int:number>/rollback/",
        policy_views.policy_rollback,
        name="routing_policy_rollback",
    ),
    path(
        "<int:policy_id>/default/", policy_views.policy_set_default, name="routing_policy_default"
    ),
    path("<int:policy_id>/pins/", policy_views.policy_pin, name="routing_policy_pin"),
    path("<int:policy_id>/delete/", policy_views.policy_delete, name="routing_policy_delete"),
]
