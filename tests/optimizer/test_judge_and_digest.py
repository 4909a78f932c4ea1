"""The judge's verdict parsing on realistic outputs, and the weekly digest."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from apps.optimizer.judge import outcome_for_candidate, verdict_read
from apps.optimizer.models import OptimizerSettings
from apps.optimizer.tasks import optimizer_digest_all_task, optimizer_run_all_task
from tests.conftest import Personas

from .conftest import Keys


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ('{"winner": "B", "reason": "B labels it correctly."}', "B"),
        ('```json\n{"winner": "A", "reason": "More complete."}\n```', "A"),
        ('Here is my verdict:\n{"winner": "tie", "reason": "Same label",}\nThanks.', "tie"),
        ('{"verdict": "Answer B", "why": "..."}', "B"),
        ("Winner: Assistant A — it follows the requested format.", "A"),
        ('{"winner": "both", "reason": "equally good"}', "tie"),
        ("B", "B"),
        ("Tie.", "tie"),
        ("Answer A is better because it is shorter.", None),  # prose: unjudged, not guessed
        ('{"winner": "C"}', None),
        ("", None),
        ("I cannot compare these answers.", None),
    ],
)
def test_verdict_read(text: str, winner: str | None) -> None:
    assert verdict_read(text) == winner


def test_outcome_is_from_the_candidates_side() -> None:
    assert outcome_for_candidate("A", candidate_label="A") == "win"
    assert outcome_for_candidate("A", candidate_label="B") == "loss"
    assert outcome_for_candidate("tie", candidate_label="B") == "tie"
    assert outcome_for_candidate(None, candidate_label="A") == "unjudged"


@pytest.mark.django_db
def test_weekly_digest_goes_to_opted_in_orgs_once(
    personas: Personas, history: Keys, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        assert optimizer_run_all_task() == 1  # only the org with traffic
    with django_capture_on_commit_callbacks(execute=True):
        optimizer_digest_all_task()
    assert mail.outbox == []  # nobody opted in
    OptimizerSettings.objects.filter(organization=personas.org).update(digest_enabled=True)
    with django_capture_on_commit_callbacks(execute=True):
        optimizer_digest_all_task()
        optimizer_digest_all_task()  # a retry within the week sends nothing more
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["admin@acme.test", "owner@acme.test"]
    assert "gpt-4o-mini" in message.body
    assert "/dashboard/recommendations/" in message.body
    OptimizerSettings.objects.filter(organization=personas.org).update(
        last_digest_at=timezone.now() - timedelta(days=7)
    )
    with django_capture_on_commit_callbacks(execute=True):
        optimizer_digest_all_task()
    assert len(mail.outbox) == 2


@pytest.mark.django_db
def test_digest_is_sent_only_on_commit(personas: Personas, history: Keys) -> None:
    call_command("run_optimizer", "--org", personas.org.slug, stdout=StringIO())
    OptimizerSettings.objects.filter(organization=personas.org).update(digest_enabled=True)
    optimizer_digest_all_task()  # inside the test's transaction: nothing committed, nothing sent
    assert mail.outbox == []
