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
    # Set on the child calls of a fan-out (Compare / Blend / Judge): the parent's request id.
    parent_request_id = models.CharField(max_length=128, blank=True, db_index=True)
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
    # Streams: from the request's arrival to the first event of the answer (None otherwise).
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    route = models.JSONField(default=dict, blank=True)
    # The auto-router's task category for this conversation ('' when not classified).
    category = models.CharField(max_length=40, blank=True)
    # Answered from the org's response cache: no provider call, no provider tokens.
    cache_hit = models.BooleanField(default=False)
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


class RoutingPolicy(models.Model):
    """An organization's named routing policy (``docs/routing.md`` § Routing policies).

    The rules themselves live in immutable :class:`RoutingPolicyVersion` rows; ``current_version``
    points at the one in force. The name is the policy's handle everywhere (requests select it
    with ``"policy": "<name>"``, other policies ``extends`` it), so it never changes after
    creation. At most one policy per organization is the default.
    """

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="routing_policies"
    )
    name = models.SlugField(max_length=60)
    description = models.CharField(max_length=300, blank=True)
    is_default = models.BooleanField(default=False)
    # SET_NULL only so deleting the policy (which cascades to its versions) never trips over
    # this back-reference; a live policy always has a current version.
    current_version = models.ForeignKey(
        "RoutingPolicyVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        verbose_name_plural = "routing policies"
        constraints = (
            models.UniqueConstraint(
                fields=["organization", "name"], name="routing_policy_name_unique_per_org"
            ),
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(is_default=True),
                name="routing_policy_one_default_per_org",
            ),
        )

    def __str__(self) -> str:
        return self.name


class RoutingPolicyVersion(models.Model):
    """One saved document of a policy. Never updated: an edit or a rollback adds a version."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    document = models.JSONField()
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("policy", "-number")
        constraints = (
            models.UniqueConstraint(
                fields=["policy", "number"], name="routing_policy_version_unique_number"
            ),
        )

    def __str__(self) -> str:
        return f"{self.policy_id} v{self.number}"


class ApiKeyPolicyPin(models.Model):
    """An API key pinned to a routing policy of its organization.

    Kept on the gateway side because accounts must not import the gateway (ARCHITECTURE §1).
    """

    api_key = models.OneToOneField(
        "accounts.ApiKey", on_delete=models.CASCADE, related_name="policy_pin"
    )
    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="pins")
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"key {self.api_key_id} → {self.policy_id}"


# --- analytics rollups ------------------------------------------------------------------------
# A fixed log-scale latency histogram: bucket i holds latencies in [edge(i-1), edge(i)) with
# edge(i) = 2 ** (i / LATENCY_BUCKETS_PER_DOUBLING) ms, so each bucket is ~19% wide and a
# percentile read at the bucket's geometric middle is within ~9% of the truth. Bucket 0 is
# everything under 1 ms; the last bucket is everything from 2**20 ms (~17 minutes) up.
LATENCY_BUCKETS_PER_DOUBLING = 4
LATENCY_BUCKET_COUNT = 20 * LATENCY_BUCKETS_PER_DOUBLING + 2


class RollupGranularity(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class RollupMeasures(models.Model):
    """The additive measures every rollup row carries (summed over the log rows it covers).

    ``latency_histogram`` is sparse: ``{"<bucket index>": count}`` over the buckets described by
    ``LATENCY_BUCKET_COUNT``; only non-empty buckets are stored.
    """

    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0, help_text="Cost, would-be cost for BYOK.")
    charged_micros = models.BigIntegerField(default=0, help_text="Charged to the wallet.")
    latency_ms_sum = models.BigIntegerField(default=0)
    upstream_ms_sum = models.BigIntegerField(default=0)
    latency_histogram = models.JSONField(default=dict, blank=True)
    estimated_usage = models.BigIntegerField(default=0)
    # Savings from auto-routing: requests that asked for "auto", what they cost, and what the
    # same tokens would have cost on the catalog's most expensive enabled frontier model.
    auto_requests = models.BigIntegerField(default=0)
    auto_cost_micros = models.BigIntegerField(default=0)
    frontier_cost_micros = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageRollup(RollupMeasures):
    """Aggregated request-log metrics for one organization, time bucket and dimension tuple.

    Written only by :func:`apps.gateway.rollups.rollups_update` (incrementally, in request-log id
    order). Each log row counts once in its hour bucket and once in its day bucket (UTC). The
    full tuple serves slicing across dimensions (the optimizer's per-model and per-key reads);
    the Overview page reads the narrower :class:`UsageBreakdownRollup` instead.
    """

    Granularity = RollupGranularity

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="usage_rollups"
    )
    bucket_start = models.DateTimeField()
    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    model = models.CharField(max_length=MODEL_ID_MAX_LENGTH, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    # A plain id rather than a foreign key: history outlives keys, and the rollup must never
    # make deleting a key (or the hot path's inserts) wait on it. Null: no key (e.g. playground).
    api_key_id = models.BigIntegerField(null=True, blank=True)
    category = models.CharField(max_length=40, blank=True)
    byok = models.BooleanField(default=False)

    class Meta:
        # NULL is distinct from NULL in a plain unique constraint, so the tuple is unique through
        # two partial constraints: one for rows with a key, one for rows without.
        constraints = (
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "granularity",
                    "bucket_start",
                    "model",
                    "provider",
                    "api_key_id",
                    "category",
                    "byok",
                ],
                condition=models.Q(api_key_id__isnull=False),
                name="usage_rollup_unique_with_key",
            ),
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "granularity",
                    "bucket_start",
                    "model",
                    "provider",
                    "category",
                    "byok",
                ],
                condition=models.Q(api_key_id__isnull=True),
                name="usage_rollup_unique_without_key",
            ),
        )
        indexes = (
            models.Index(
                fields=["organization", "granularity", "bucket_start"],
                name="usage_rollup_org_range",
            ),
        )

    def __str__(self) -> str:
        return f"{self.organization_id} {self.granularity} {self.bucket_start:%Y-%m-%d %H:%M}"


class UsageBreakdownRollup(RollupMeasures):
    """The Overview's narrow rollups: per organization and time bucket, the totals and the
    totals per model, per API key and per task category — one ``dimension`` per row.

    The same log rows as :class:`UsageRollup`, projected onto one dimension at a time, and
    written by the same job in the same transaction. A bucket of an organization holds one
    ``total`` row plus one row per model, key and category seen, so a week by the hour is a few
    thousand rows where the full tuple is tens of thousands: the page's cost stays flat.
    Only the columns of the row's dimension are set; the others stay empty.
    """

    Granularity = RollupGranularity

    class Dimension(models.TextChoices):
        TOTAL = "total", "Total"
        MODEL = "model", "Model"
        KEY = "key", "API key"
        CATEGORY = "category", "Task category"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="usage_breakdowns"
    )
    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    dimension = models.CharField(max_length=8, choices=Dimension.choices)
    model = models.CharField(max_length=MODEL_ID_MAX_LENGTH, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)  # key rows: null = no key
    category = models.CharField(max_length=40, blank=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "granularity",
                    "dimension",
                    "bucket_start",
                    "model",
                    "provider",
                    "api_key_id",
                    "category",
                ],
                condition=models.Q(api_key_id__isnull=False),
                name="usage_breakdown_unique_with_key",
            ),
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "granularity",
                    "dimension",
                    "bucket_start",
                    "model",
                    "provider",
                    "category",
                ],
                condition=models.Q(api_key_id__isnull=True),
                name="usage_breakdown_unique_without_key",
            ),
        )
        indexes = (
            models.Index(
                fields=["organization", "granularity", "dimension", "bucket_start"],
                name="usage_breakdown_org_range",
            ),
        )

    def __str__(self) -> str:
        return (
            f"{self.organization_id} {self.granularity} {self.dimension} "
            f"{self.bucket_start:%Y-%m-%d %H:%M}"
        )


class RollupCursor(models.Model):
    """How far a rollup job has read the request log: every row with ``id <= last_id`` is in.

    One row per job name. Locked (``SELECT ... FOR UPDATE``) while a batch is applied, which is
    what makes two concurrent runs safe: the rollups and the cursor move in one transaction.
    """

    name = models.CharField(primary_key=True, max_length=40)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.last_id}"


CACHE_TTL_MAX_SECONDS = 7 * 24 * 3600
CACHE_FEE_MAX_MICROS = 1_000_000  # $1 per hit would be a mistake, not a price


class OrgGatewaySettings(models.Model):
    """Per-organization gateway options; absent row = the defaults (response cache off).

    Written only by ``services.org_gateway_settings_update`` (audit-logged).
    """

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="gateway_settings"
    )
    cache_enabled = models.BooleanField(default=False)
    cache_ttl_seconds = models.PositiveIntegerField(default=300)
    # Charged per cache hit (0: hits are free); micro-USD.
    cache_fee_micros = models.PositiveIntegerField(default=0)
    # The failover chain for `"mesh": true` requests (catalog ids, in order); empty: same-tier
    # alternatives of the requested model.
    default_chain = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"gateway settings of org {self.organization_id}"
