"""The optimizer's data: per-org thresholds, job runs, recommendations and replay-lab runs.

Nothing here holds prompt or completion text. Replay runs keep the ids of the request-log rows
they replay and of the calls they made; the texts stay in the request log, under its retention
rules (docs/optimizer.md).
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

# Defaults of the org-level thresholds (OptimizerSettings), named so tests and docs share them.
DEFAULT_WINDOW_DAYS = 14
MAX_WINDOW_DAYS = 90
DEFAULT_MIN_REQUESTS = 20
DEFAULT_MAX_ERROR_RATE = 0.05
DEFAULT_MAX_P95_LATENCY_MS = 20_000
DEFAULT_MIN_QUALITY = 0.8
DEFAULT_MIN_JUDGED = 5
DEFAULT_RUNAWAY_SPEND_RATIO = 2.0
DEFAULT_RUNAWAY_SPEND_MIN_MICROS = 1_000_000  # $1 more than last week before a key is flagged
DEFAULT_CACHE_MIN_DUPLICATES = 10
DEFAULT_ERROR_RISE_FACTOR = 2.0


class OptimizerSettings(models.Model):
    """One organization's optimizer thresholds and digest opt-in (created with defaults)."""

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="optimizer_settings"
    )
    window_days = models.PositiveSmallIntegerField(
        default=DEFAULT_WINDOW_DAYS,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WINDOW_DAYS)],
        help_text="How many days of traffic the analysis reads.",
    )
    min_requests = models.PositiveIntegerField(
        default=DEFAULT_MIN_REQUESTS,
        validators=[MinValueValidator(1)],
        help_text="Requests a model needs in a task category before it is judged on them.",
    )
    max_error_rate = models.FloatField(
        default=DEFAULT_MAX_ERROR_RATE,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A model failing more often than this is never recommended, nor kept in chains.",
    )
    max_p95_latency_ms = models.PositiveIntegerField(
        default=DEFAULT_MAX_P95_LATENCY_MS, validators=[MinValueValidator(1)]
    )
    min_quality = models.FloatField(
        default=DEFAULT_MIN_QUALITY,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of replayed requests the judge found as good or better than the "
        "original answer, for a cheaper model to count as verified.",
    )
    min_judged = models.PositiveIntegerField(
        default=DEFAULT_MIN_JUDGED,
        validators=[MinValueValidator(1)],
        help_text="Judged replays needed before the quality signal counts.",
    )
    runaway_spend_ratio = models.FloatField(
        default=DEFAULT_RUNAWAY_SPEND_RATIO, validators=[MinValueValidator(1.0)]
    )
    runaway_spend_min_micros = models.BigIntegerField(
        default=DEFAULT_RUNAWAY_SPEND_MIN_MICROS, validators=[MinValueValidator(0)]
    )
    cache_min_duplicates = models.PositiveIntegerField(
        default=DEFAULT_CACHE_MIN_DUPLICATES, validators=[MinValueValidator(1)]
    )
    digest_enabled = models.BooleanField(
        default=False, help_text="Email owners and admins a weekly digest of new recommendations."
    )
    last_digest_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "optimizer settings"

    def __str__(self) -> str:
        return f"optimizer settings of {self.organization_id}"


class OptimizerRun(models.Model):
    """One run of the aggregation + recommendation job for one organization."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="optimizer_runs"
    )
    trigger = models.CharField(max_length=20, default="schedule")  # schedule, dashboard, command
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    rows_scanned = models.BigIntegerField(default=0)
    duration_ms = models.PositiveIntegerField(default=0)
    # The per model x category table the recommendations rest on (bounded: models x categories).
    stats = models.JSONField(default=dict, blank=True)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    superseded = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = (models.Index(fields=["organization", "-started_at"]),)

    def __str__(self) -> str:
        return f"optimizer run {self.pk} of {self.organization_id} ({self.status})"


class Recommendation(models.Model):
    """One thing the optimizer suggests changing, with the numbers it rests on.

    ``target`` says what it is about within its kind (a task category, a model, a key id), so
    at most one *new* recommendation exists per organization, kind and target: a later run
    updates it in place or supersedes it.
    """

    class Kind(models.TextChoices):
        PRIMARY_MODEL = "primary_model", "Primary model for a task category"
        FALLBACK_CHAIN = "fallback_chain", "Fallback chain"
        ROUTING_POLICY = "routing_policy", "Routing policy proposal"
        RISING_ERRORS = "rising_errors", "Rising error rate"
        RUNAWAY_SPEND = "runaway_spend", "Runaway key spend"
        CACHE_OPPORTUNITY = "cache_opportunity", "Cache opportunity"

    class Status(models.TextChoices):
        NEW = "new", "New"
        APPLIED = "applied", "Applied"
        DISMISSED = "dismissed", "Dismissed"
        SUPERSEDED = "superseded", "Superseded"
        REVERTED = "reverted", "Reverted"

    # Kinds that change routing when applied; the others are flags to read and dismiss.
    APPLICABLE_KINDS = (Kind.PRIMARY_MODEL, Kind.FALLBACK_CHAIN, Kind.ROUTING_POLICY)

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="recommendations"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    target = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.NEW)
    title = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)  # what to change
    evidence = models.JSONField(default=dict, blank=True)  # the numbers
    fingerprint = models.CharField(max_length=64)  # of kind, target and payload
    monthly_saving_micros = models.BigIntegerField(default=0)
    saving_percent = models.FloatField(null=True, blank=True)
    confidence = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    run = models.ForeignKey(
        OptimizerRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    applied_policy_version = models.ForeignKey(
        "gateway.RoutingPolicyVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    # How to undo an apply: {"policy_id", "policy_name", "created_policy", "previous_version"}.
    apply_info = models.JSONField(default=dict, blank=True)
    status_changed_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-monthly_saving_micros", "-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=["organization", "kind", "target"],
                condition=models.Q(status="new"),
                name="recommendation_one_new_per_target",
            ),
        )
        indexes = (models.Index(fields=["organization", "status", "-created_at"]),)

    def __str__(self) -> str:
        return f"{self.kind} {self.target} ({self.status})"

    @property
    def applicable(self) -> bool:
        return self.kind in self.APPLICABLE_KINDS

    @property
    def monthly_saving_usd(self) -> float:
        return self.monthly_saving_micros / 1_000_000


class ReplayRun(models.Model):
    """A replay-lab run: past requests re-run against candidate models, judged against the
    original answers. ``sample`` holds request-log ids; ``results`` per-item metadata and the
    summary — never texts."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Awaiting confirmation"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="replay_runs"
    )
    recommendation = models.ForeignKey(
        Recommendation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="replay_runs",
    )
    policy_document = models.JSONField(null=True, blank=True)  # a draft policy to test
    category = models.CharField(max_length=40, blank=True)  # the task category sampled, if one
    candidate_model = models.CharField(max_length=100, blank=True)  # one model, or by policy
    request_id = models.CharField(max_length=64, unique=True)  # parent id of the calls made
    sample_size = models.PositiveIntegerField()
    sample = models.JSONField(default=list, blank=True)  # request-log ids
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    estimate_micros = models.BigIntegerField(default=0)
    actual_cost_micros = models.BigIntegerField(default=0)
    results = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (models.Index(fields=["organization", "-created_at"]),)

    def __str__(self) -> str:
        return f"replay {self.pk} ({self.status})"

    @property
    def progress_percent(self) -> int:
        if not self.total:
            return 0
        return round(100 * (self.completed + self.failed) / self.total)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES
