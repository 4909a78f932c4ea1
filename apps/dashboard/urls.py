from django.urls import include, path

from apps.gateway import routing_views

from . import privacy_views, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("playground/", include("apps.orchestration.urls")),
    path("usage/", include("apps.gateway.log_urls")),
    path("settings/providers/", include("apps.gateway.byok_urls")),
    path("billing/", include("apps.wallet.urls")),
    path("routing/policies/", include("apps.gateway.policy_urls")),
    path("routing/", routing_views.routing_status, name="routing"),
    path("recommendations/", include("apps.optimizer.urls")),
    path("keys/", views.api_keys, name="api_keys"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("team/", views.team, name="team"),
    path(
        "team/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("team/members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("team/members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path(
        "team/members/<int:membership_id>/transfer/",
        views.transfer_ownership,
        name="transfer_ownership",
    ),
    path("team/leave/", views.leave, name="leave"),
    path("invitations/<int:invitation_id>/join/", views.invitation_join, name="invitation_join"),
    path("orgs/switch/", views.switch_org, name="switch_org"),
    path("orgs/new/", views.org_create, name="org_create"),
    path("settings/", views.org_settings, name="settings"),
    path("settings/export/", privacy_views.org_export, name="org_export"),
    path("account/delete/", privacy_views.account_delete, name="account_delete"),
    path("audit/", views.audit_log, name="audit"),
]
