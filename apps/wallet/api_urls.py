from django.urls import path

from .apis import WalletApi

urlpatterns = [
    path("wallet", WalletApi.as_view(), name="api_wallet"),
]
