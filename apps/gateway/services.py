"""Writes of gateway data."""

from __future__ import annotations

from django.db import transaction

from .catalog_data import MODELS, write_catalog
from .models import CatalogModel, ModelAlias


@transaction.atomic
def catalog_seed() -> int:
    """Create the seeded models and aliases that are missing (idempotent); returns how many
    models the seed holds."""
    write_catalog(CatalogModel, ModelAlias)
    return len(MODELS)
