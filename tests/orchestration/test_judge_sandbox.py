"""Judge and best-of Blend against the sandbox with no scripted reply: the sandbox answers a
judge's request with a JSON verdict, as a real model would, so both work in sandbox mode (the
playground of the embedded default). Over real HTTP, through the real judge prompt."""

from __future__ import annotations

import hashlib
import json

import pytest

from apps.gateway.sandbox.verdict import judge_reply
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

from .conftest import FUNDS, MODELS, audit_ok, messages, post, wallet_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

CANDIDATES = ["Paris is the capital of France.", "Lyon, I believe.", "It is Paris."]


def _expected_total(text: str, criteria: tuple[str, ...]) -> int:
    """The sandbox's documented scoring: 5-9 per criterion from a hash of the answer."""
    return sum(5 + hashlib.sha256(f"{name}\n{text}".encode()).digest()[0] % 5 for name in criteria)


def test_judge_ranks_candidates_without_a_scripted_reply(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    criteria = ("accuracy", "helpfulness", "clarity", "brevity")
    body = {
        "messages": messages("What is the capital of France?"),
        "candidates": CANDIDATES,
        "criteria": [{"name": "brevity", "description": "Short."}],
        "shuffle": False,
        "max_tokens": 60,
    }
    first = post(live_gateway, "judge", secret, body)
    assert first.status_code == 200, first.text
    ranking = first.json()["ranking"]
    assert sorted(r["index"] for r in ranking) == [0, 1, 2]
    for entry in ranking:
        assert set(entry["scores"]) == set(criteria)
        assert all(5 <= score <= 9 for score in entry["scores"].values())
        assert sum(entry["scores"].values()) == _expected_total(
            CANDIDATES[entry["index"]], criteria
        )
    totals = [sum(r["scores"].values()) for r in ranking]
    assert totals == sorted(totals, reverse=True)
    # Deterministic: the same candidates get the same verdict.
    second = post(live_gateway, "judge", secret, body)
    assert [r["index"] for r in second.json()["ranking"]] == [r["index"] for r in ranking]
    assert wallet_of(personas).balance_micros < FUNDS
    audit_ok()


def test_best_of_blend_works_on_the_sandbox(secret: str, live_gateway: LiveGateway) -> None:
    body = {
        "messages": messages("Name a primary colour."),
        "models": MODELS[:2],
        "strategy": "best-of",
        "max_tokens": 60,
    }
    response = post(live_gateway, "blend", secret, body)
    assert response.status_code == 200, response.text
    answer = response.json()["answer"]
    assert answer["source"] == "best-of"
    assert answer["content"].startswith("Sandbox answer from ")


def test_only_judge_shaped_requests_get_a_verdict() -> None:
    shape = 'Answer with ONLY a JSON object: {"candidates": [{"label": "A", "scores": {"x": 0}}],'
    shape += ' "ranking": ["A", "B"]}'
    two = '<candidate label="A">\none\n</candidate>\n\n<candidate label="B">\ntwo\n</candidate>'
    verdict = judge_reply([("system", shape), ("user", two)])
    assert verdict is not None
    data = json.loads(verdict)
    assert {c["label"] for c in data["candidates"]} == {"A", "B"}
    assert sorted(data["ranking"]) == ["A", "B"]
    # No JSON shape, one candidate, or no criteria: an ordinary answer (None here).
    assert judge_reply([("user", two)]) is None
    assert judge_reply([("system", shape), ("user", two.split("\n\n")[0])]) is None
    assert judge_reply([("system", shape.replace('"x": 0', "")), ("user", two)]) is None
