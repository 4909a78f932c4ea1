"""A Compare run whose calls fail for a reason of ours (the database went away mid-stream) still
ends: every call reports a result, so the run never waits forever for one that crashed."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.gateway.conftest import FaultControl, LiveGateway
from tests.gateway.test_database_outage import Outage, outage  # noqa: F401 - the fixture

from .conftest import MODELS, messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

# Far below the run's own deadline (ORCHESTRATION_TIMEOUT_SECONDS): the run must end on its own.
ENDS_WITHIN_SECONDS = 20


def test_a_run_ends_when_its_calls_crash_mid_stream(
    secret: str,
    live_gateway: LiveGateway,
    faults: FaultControl,
    outage: Outage,  # noqa: F811
) -> None:
    faults.set(provider="*", fault="none", chunk_delay_ms=150)
    started = time.monotonic()
    names: list[str] = []
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/api/v1/compare",
        headers={"Authorization": f"Bearer {secret}"},
        json={"models": MODELS, "messages": messages(), "max_tokens": 200, "stream": True},
        timeout=ENDS_WITHIN_SECONDS,
    ) as response:
        assert response.status_code == 200
        try:
            for line in response.iter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                    if names == ["run"]:
                        # Held and streaming: now every settle and log write fails.
                        outage.begin()
        except httpx.RemoteProtocolError:
            pass  # closing the run needs the database too: the stream may be cut at the end
    assert names[0] == "run"
    assert time.monotonic() - started < ENDS_WITHIN_SECONDS
