from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class GatewayConfig(AppConfig):
    name = "apps.gateway"
    label = "gateway"

    def ready(self) -> None:
        from .models import CatalogModel, ModelAlias
        from .selectors import catalog_cache_clear

        # A catalog edit (admin, seed) is seen by this process at once; others within seconds.
        for model in (CatalogModel, ModelAlias):
            post_save.connect(catalog_cache_clear, sender=model, dispatch_uid=f"catalog-{model}")
            post_delete.connect(
                catalog_cache_clear, sender=model, dispatch_uid=f"catalog-d-{model}"
            )
