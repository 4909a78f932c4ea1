"""The model catalog: what we can route to, at which upstream name, for which price.

Prices are integers in micro-USD per million tokens (ARCHITECTURE §3), so a cost is an exact
integer computation (:func:`apps.gateway.pricing.cost_micros`). The catalog is data: seeded by a
migration, edited in the admin, never hard-coded in the adapters.
"""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

# Our ids look like OpenAI's and OpenRouter's (``gpt-4o``, ``anthropic/claude-sonnet-4.5``), so a
# plain SlugField is too strict: dots and slashes are part of real model names.
MODEL_ID_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9._/-]*$",
    "Lower-case letters, digits, '.', '_', '-' and '/' only.",
)
MODEL_ID_MAX_LENGTH = 100


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OPENROUTER = "openrouter", "OpenRouter"
    MISTRAL = "mistral", "Mistral"
    GROQ = "groq", "Groq"
    DEEPSEEK = "deepseek", "DeepSeek"
    XAI = "xai", "xAI"
    TOGETHER = "together", "Together AI"


class Tier(models.TextChoices):
    BUDGET = "budget", "Budget"
    STANDARD = "standard", "Standard"
    FRONTIER = "frontier", "Frontier"


class CatalogModel(models.Model):
    """One model we can call: our id, where it lives, what it costs, what it can do."""

    id = models.CharField(
        primary_key=True, max_length=MODEL_ID_MAX_LENGTH, validators=[MODEL_ID_VALIDATOR]
    )
    provider = models.CharField(max_length=20, choices=Provider.choices, db_index=True)
    upstream_name = models.CharField(
        max_length=200, help_text="The provider's exact model name, sent on the wire."
    )
    display_name = models.CharField(max_length=100, blank=True)
    input_price_micros_per_mtok = models.PositiveBigIntegerField(
        help_text="Micro-USD per million input tokens."
    )
    output_price_micros_per_mtok = models.PositiveBigIntegerField(
        help_text="Micro-USD per million output tokens (reasoning tokens included)."
    )
    cached_input_price_micros_per_mtok = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Micro-USD per million cached input tokens; empty means the input price.",
    )
    context_window = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    max_output_tokens = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    default_max_tokens = models.PositiveIntegerField(
        validators=[MinValueValidator(1)],
        help_text="Sent upstream and reserved for when a request gives no max_tokens.",
    )
    supports_streaming = models.BooleanField(default=True)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    tier = models.CharField(max_length=10, choices=Tier.choices, default=Tier.STANDARD)
    enabled = models.BooleanField(default=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("provider", "id")
        constraints = (
            models.CheckConstraint(
                condition=models.Q(default_max_tokens__lte=models.F("max_output_tokens")),
                name="catalog_default_max_tokens_within_max_output",
            ),
        )

    def __str__(self) -> str:
        return self.id


class ModelAlias(models.Model):
    """Another name a caller may use for a catalog model (``claude-sonnet-4-5-20250929``)."""

    alias = models.CharField(
        primary_key=True, max_length=MODEL_ID_MAX_LENGTH, validators=[MODEL_ID_VALIDATOR]
    )
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="aliases")

    class Meta:
        ordering = ("alias",)
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.alias} → {self.model_id}"


class RequestLog(models.Model):
    """One row per API request, written in the same transaction that settles its money.

    Under zero retention ``prompt`` and ``completion`` stay empty: metadata only.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="request_logs"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="request_logs",
    )
    request_id = models.CharField(max_length=128, unique=True)
    endpoint = models.CharField(max_length=40)
    requested_model = models.CharField(max_length=MODEL_ID_MAX_LENGTH)
    model = models.CharField(max_length=MODEL_ID_MAX_LENGTH, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=60, blank=True)
    error_code = models.CharField(max_length=60, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    cost_micros = models.BigIntegerField(default=0)
    byok = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(default=0)
    upstream_ms = models.PositiveIntegerField(default=0)
    route = models.JSONField(default=dict, blank=True)
    prompt = models.JSONField(null=True, blank=True)
    completion = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = (models.Index(fields=["organization", "-created_at"]),)

    def __str__(self) -> str:
        return f"{self.request_id} {self.model or self.requested_model} {self.status}"


class ProviderKey(models.Model):
    """An organization's own key for one provider (BYOK): calls routed with it charge no credit.

    Only the encrypted secret is stored (``apps.gateway.encryption``), with the id of the key that
    encrypted it so ``manage.py rotate_encryption_keys`` knows what to re-encrypt, and the last
    four characters as the only part ever shown back. One key per organization and provider:
    setting a new one replaces it.
    """

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="provider_keys"
    )
    provider = models.CharField(max_length=20, choices=Provider.choices)
    secret_encrypted = models.TextField(help_text="Fernet token; never the plaintext.")
    encryption_key_id = models.CharField(max_length=16)
    suffix = models.CharField(max_length=4, help_text="The secret's last characters, for display.")
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_verify_ok = models.BooleanField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("provider",)
        constraints = (
            models.UniqueConstraint(
                fields=["organization", "provider"], name="provider_key_one_per_org_provider"
            ),
        )

    def __str__(self) -> str:
        return f"{self.provider} key {self.masked}"

    @property
    def masked(self) -> str:
        return f"••••{self.suffix}"
