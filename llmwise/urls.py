from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from apps.gateway import anthropic_api, native_api
from llmwise import health, metrics

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/schema", SpectacularAPIView.as_view(permission_classes=[]), name="api_schema"),
    path("api/v1/chat", native_api.chat, name="native_chat"),
    path("api/v1/", include("apps.accounts.api_urls")),
    path("api/v1/", include("apps.wallet.api_urls")),
    path("api/v1/", include("apps.gateway.api_urls")),
    path("api/v1/", include("apps.orchestration.api_urls")),
    path("api/v1/", include("apps.optimizer.api_urls")),
    path("webhooks/", include("apps.wallet.webhook_urls")),
    path("v1/messages", anthropic_api.messages, name="anthropic_messages"),
    path("v1/", include("apps.gateway.openai_urls")),
    path("dashboard/", include("apps.dashboard.urls")),
    path("", include("apps.dashboard.public_urls")),
]
