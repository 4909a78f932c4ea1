"""Provider keys (BYOK), included by the dashboard under ``settings/providers/`` (names join
``dashboard:``)."""

from django.urls import path

from . import byok_views

urlpatterns = [
    path("", byok_views.provider_keys, name="provider_keys"),
    path("<int:key_id>/delete/", byok_views.provider_key_delete, name="provider_key_delete"),
    path("<int:key_id>/verify/", byok_views.provider_key_verify, name="provider_key_verify"),
]
