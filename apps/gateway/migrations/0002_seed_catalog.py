"""Seed the catalog (data in apps/gateway/catalog_data.py)."""

from django.db import migrations

from apps.gateway.catalog_data import ALIASES, MODELS, write_catalog


def seed(apps, schema_editor):
    write_catalog(
        apps.get_model("gateway", "CatalogModel"), apps.get_model("gateway", "ModelAlias")
    )


def unseed(apps, schema_editor):
    apps.get_model("gateway", "ModelAlias").objects.filter(alias__in=ALIASES).delete()
    apps.get_model("gateway", "CatalogModel").objects.filter(
        id__in=[row[0] for row in MODELS]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
