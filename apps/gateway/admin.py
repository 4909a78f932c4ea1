"""The catalog is data operators edit: prices, caps, switches. Aliases edit inline."""

from __future__ import annotations

from django.contrib import admin

from .models import CatalogModel, ModelAlias


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 1


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "provider",
        "upstream_name",
        "tier",
        "input_price_micros_per_mtok",
        "output_price_micros_per_mtok",
        "cached_input_price_micros_per_mtok",
        "context_window",
        "max_output_tokens",
        "enabled",
    )
    list_filter = ("provider", "tier", "enabled", "supports_tools", "supports_vision")
    list_editable = ("enabled",)
    search_fields = ("id", "upstream_name", "display_name", "aliases__alias")
    readonly_fields = ("created_at", "updated_at")
    inlines = (ModelAliasInline,)
    fieldsets = (
        (None, {"fields": ("id", "display_name", "provider", "upstream_name", "tier", "enabled")}),
        (
            "Prices (micro-USD per million tokens)",
            {
                "fields": (
                    "input_price_micros_per_mtok",
                    "output_price_micros_per_mtok",
                    "cached_input_price_micros_per_mtok",
                )
            },
        ),
        ("Limits", {"fields": ("context_window", "max_output_tokens", "default_max_tokens")}),
        (
            "Capabilities",
            {"fields": ("supports_streaming", "supports_tools", "supports_vision")},
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = ("alias", "model")
    search_fields = ("alias", "model__id")
    autocomplete_fields = ("model",)
