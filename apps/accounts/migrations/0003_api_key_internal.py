"""Internal API keys: the dashboard's playground key gets a flag (and the name usage shows)."""

from django.db import migrations, models

# The dashboard key's name and owner before keys had an ``internal`` flag (apps.gateway.principals).
OLD_DASHBOARD_KEY_NAME = "Dashboard (playground)"
PLAYGROUND_KEY_NAME = "Playground"


def mark_dashboard_keys(apps, schema_editor):
    """Existing dashboard keys become internal and take the name usage pages show for them."""
    api_key = apps.get_model("accounts", "ApiKey")
    api_key.objects.filter(name=OLD_DASHBOARD_KEY_NAME, created_by=None).update(
        internal=True, name=PLAYGROUND_KEY_NAME
    )


def unmark_dashboard_keys(apps, schema_editor):
    api_key = apps.get_model("accounts", "ApiKey")
    api_key.objects.filter(internal=True).update(name=OLD_DASHBOARD_KEY_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_api_key_zero_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="internal",
            field=models.BooleanField(
                default=False,
                help_text="Made by the platform for dashboard calls; hidden from the "
                "organization's key list and not managed by its members.",
            ),
        ),
        migrations.RunPython(mark_dashboard_keys, unmark_dashboard_keys),
    ]
