"""Operations fixtures: the gateway's sandbox upstream and live server, and a /metrics reader."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.routing import health
from tests.gateway.conftest import (  # noqa: F401 - fixtures shared with the gateway tests
    faults,
    live_gateway,
    sandbox,
)


class Metrics:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def grown(self, since: Metrics, name: str, **labels: str) -> float:
        """How much ``name`` (with ``labels``) grew from the scrape ``since`` to this one."""
        return self.value(name, **labels) - since.value(name, **labels)

    def has(self, name: str, **labels: str) -> bool:
        return any(
            sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
            for sample in self.samples
        )


@pytest.fixture
def metrics_token(settings: Any) -> str:
    token = "mt-" + secrets.token_urlsafe(24)
    settings.METRICS_TOKEN = token
    return token


def scrape(base_url: str, token: str) -> Metrics:
    response = httpx.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return Metrics(response.text)


@pytest.fixture
def clean_health() -> Iterator[None]:
    """No breaker state from another test, and none left for the next (in-process counters
    outlive a test; Redis ones are flushed with the cache)."""

    def clear() -> None:
        store = counters()
        if isinstance(store, MemoryCounters):
            store.clear()
        health.health_local_clear()

    clear()
    yield
    clear()
