"""The parent row of a Compare / Blend / Judge run; its child calls are RequestLog rows whose
``parent_request_id`` is this run's ``request_id`` (written by the gateway's call service).

Metadata only, never prompt or answer text: the children's log rows hold texts under the key's
retention setting, so a zero-retention run stores no text anywhere.
"""

from __future__ import annotations

from django.db import models


class OrchestrationRun(models.Model):
    class Mode(models.TextChoices):
        COMPARE = "compare", "Compare"
        BLEND = "blend", "Blend"
        JUDGE = "judge", "Judge"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "OK"
        PARTIAL = "partial", "Partial (some calls failed)"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="orchestration_runs"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="orchestration_runs",
    )
    request_id = models.CharField(max_length=128, unique=True)
    mode = models.CharField(max_length=10, choices=Mode.choices)
    endpoint = models.CharField(max_length=40)
    model_ids = models.JSONField(default=list)  # candidate model ids, in request order
    options = models.JSONField(default=dict, blank=True)  # strategy, judge/synthesizer, ...
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    error_code = models.CharField(max_length=60, blank=True)
    reserved_micros = models.BigIntegerField(default=0)  # the fan-out's single hold
    cost_micros = models.BigIntegerField(default=0)  # sum over the child calls
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    calls = models.PositiveSmallIntegerField(default=0)
    failed_calls = models.PositiveSmallIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = (models.Index(fields=["organization", "-created_at"]),)

    def __str__(self) -> str:
        return f"{self.request_id} {self.mode} {self.status}"
