from django.urls import path

from .apis import KeyInfoApi

urlpatterns = [
    path("key", KeyInfoApi.as_view(), name="api_key_info"),
]
