from django.urls import path

from . import docs_views, public_views

urlpatterns = [
    path("", public_views.landing, name="landing"),
    path("newsletter/subscribe/", public_views.newsletter_subscribe, name="newsletter_subscribe"),
    path(
        "newsletter/confirm/<str:token>/",
        public_views.newsletter_confirm,
        name="newsletter_confirm",
    ),
    path(
        "newsletter/unsubscribe/<str:token>/",
        public_views.newsletter_unsubscribe,
        name="newsletter_unsubscribe",
    ),
    path("invitations/<str:token>/", public_views.invitation_accept, name="invitation_accept"),
    path("docs/", docs_views.quickstart, name="docs"),
    path("docs/api/", docs_views.api_reference, name="docs_api"),
]
