"""URL routes, filled in by their feature."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
