"""Reads of the model catalog.

The catalog is global (not tenant-owned): every organization sees the same models; what a key may
use is a policy applied on top by the caller.
"""

from __future__ import annotations

from django.db.models import QuerySet

from .models import CatalogModel, ModelAlias


def catalog_resolve(*, model_id: str) -> CatalogModel | None:
    """The enabled catalog model named ``model_id`` directly or through an alias, else ``None``.

    An id wins over an alias of the same spelling, so adding an alias can never hijack a model.
    """
    model = CatalogModel.objects.filter(pk=model_id, enabled=True).first()
    if model is not None:
        return model
    alias = (
        ModelAlias.objects.select_related("model")
        .filter(alias=model_id, model__enabled=True)
        .first()
    )
    return alias.model if alias is not None else None


async def acatalog_resolve(*, model_id: str) -> CatalogModel | None:
    """:func:`catalog_resolve` for the async hot path (same rules, async ORM)."""
    model = await CatalogModel.objects.filter(pk=model_id, enabled=True).afirst()
    if model is not None:
        return model
    alias = await (
        ModelAlias.objects.select_related("model")
        .filter(alias=model_id, model__enabled=True)
        .afirst()
    )
    return alias.model if alias is not None else None


def catalog_list(*, include_disabled: bool = False) -> QuerySet[CatalogModel]:
    """Catalog models in a stable order (provider, id); enabled ones unless asked otherwise."""
    models = CatalogModel.objects.all()
    if not include_disabled:
        models = models.filter(enabled=True)
    return models.order_by("provider", "id")
