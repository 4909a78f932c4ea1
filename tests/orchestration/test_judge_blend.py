"""POST /api/v1/judge and /api/v1/blend over real HTTP against the sandbox. The sandbox's
scripted-reply marker makes the judge answer a chosen verdict (valid, fenced, or prose)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.orchestration.models import OrchestrationRun
from apps.wallet.models import Reservation
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway

from .conftest import FUNDS, MODELS, audit_ok, messages, post, reply_marker, sse_events, wallet_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

CRITERIA = ("accuracy", "helpfulness", "clarity")


def _verdict(scores: dict[str, int], ranking: list[str] | None = None) -> dict[str, Any]:
    """A judge's verdict giving each label the same score on every default criterion."""
    return {
        "candidates": [
            {"label": label, "scores": dict.fromkeys(CRITERIA, score), "rationale": f"{label} ok"}
            for label, score in scores.items()
        ],
        "ranking": ranking or sorted(scores, key=lambda label: -scores[label]),
    }


def _judge_body(judge_says: str, **changes: Any) -> dict[str, Any]:
    return {
        "messages": messages(f"Which is right? {reply_marker(judge_says)}"),
        "candidates": ["Paris is the capital.", {"content": "Lyon is the capital.", "model": "x"}],
        "shuffle": False,
        "max_tokens": 60,
        **changes,
    }


def test_judge_scores_and_ranks_supplied_candidates(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    verdict = json.dumps(_verdict({"A": 9, "B": 3}))
    response = post(live_gateway, "judge", secret, _judge_body(verdict))
    assert response.status_code == 200, response.text
    body = response.json()
    ranking = body["ranking"]
    assert [(r["index"], r["rank"]) for r in ranking] == [(0, 1), (1, 2)]
    assert ranking[0]["scores"] == dict.fromkeys(CRITERIA, 9.0)
    assert ranking[0]["overall"] == 9.0
    assert ranking[1]["overall"] == 3.0
    assert ranking[0]["rationale"] == "A ok"
    assert ranking[1]["model"] == "x"
    assert body["winner"] == 0
    assert [c["name"] for c in body["judge"]["criteria"]] == list(CRITERIA)
    # One judge call, billed under the run.
    (log,) = RequestLog.objects.filter(parent_request_id=body["id"])
    assert (log.model, log.status) == ("gpt-4o-mini", "ok")
    assert wallet_of(personas).balance_micros == FUNDS - log.cost_micros
    assert body["totals"]["cost"]["micros"] == log.cost_micros
    audit_ok()


def test_judge_output_in_prose_with_a_code_fence_and_trailing_comma_is_repaired(
    secret: str, live_gateway: LiveGateway
) -> None:
    custom = {"name": "brevity", "description": "Short."}
    verdict = _verdict({"A": 2, "B": 8})
    for entry in verdict["candidates"]:
        entry["scores"]["brevity"] = "7"  # a number as a string: accepted
    fenced = "Verdict:\n```json\n" + json.dumps(verdict)[:-1] + ",}\n```\nDone."
    response = post(live_gateway, "judge", secret, _judge_body(fenced, criteria=[custom]))
    assert response.status_code == 200, response.text
    ranking = response.json()["ranking"]
    assert [r["index"] for r in ranking] == [1, 0]
    assert ranking[0]["scores"]["brevity"] == 7.0


def test_judge_output_that_is_not_json_is_a_clear_502_and_the_call_is_still_billed(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = post(live_gateway, "judge", secret, _judge_body("I prefer the first one."))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "judge_output_invalid"
    run = OrchestrationRun.objects.get(request_id=response.headers["x-request-id"])
    assert (run.status, run.error_code) == ("error", "judge_output_invalid")
    (log,) = RequestLog.objects.filter(parent_request_id=run.request_id)
    assert wallet_of(personas).balance_micros == FUNDS - log.cost_micros
    assert wallet_of(personas).reserved_micros == 0
    audit_ok()


def test_judge_verdict_missing_a_candidate_is_invalid(
    secret: str, live_gateway: LiveGateway
) -> None:
    verdict = json.dumps(_verdict({"A": 9}))
    response = post(live_gateway, "judge", secret, _judge_body(verdict))
    assert response.status_code == 502
    assert "B" in response.json()["error"]["message"]


def test_both_orders_averages_away_a_judge_that_always_prefers_the_first_position(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    # This judge gives whatever it sees first a 9 and second a 3: pure position bias.
    verdict = json.dumps(_verdict({"A": 9, "B": 3}))
    response = post(live_gateway, "judge", secret, _judge_body(verdict, both_orders=True))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["overall"] for r in body["ranking"]] == [6.0, 6.0]
    assert body["judge"]["orders_shown"] == [[0, 1], [1, 0]]
    assert RequestLog.objects.filter(parent_request_id=body["id"]).count() == 2
    audit_ok()


def test_shuffle_records_the_order_the_judge_saw(secret: str, live_gateway: LiveGateway) -> None:
    verdict = json.dumps(_verdict({"A": 9, "B": 3}))
    seen = set()
    for seed in range(6):
        body = post(
            live_gateway, "judge", secret, _judge_body(verdict, shuffle=True, seed=seed)
        ).json()
        shown = body["judge"]["orders_shown"][0]
        # The candidate shown first (label A) is the one that got the 9.
        assert body["winner"] == shown[0]
        seen.add(tuple(shown))
    assert seen == {(0, 1), (1, 0)}


def test_judge_with_generated_candidates(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    verdict = json.dumps(_verdict({"A": 5, "B": 7}))
    body = _judge_body(verdict)
    del body["candidates"]
    body["models"] = MODELS[:2]
    response = post(live_gateway, "judge", secret, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [c["model"] for c in data["candidates"]] == MODELS[:2]
    assert data["winner"] == 1
    assert data["ranking"][0]["model"] == MODELS[1]
    assert RequestLog.objects.filter(parent_request_id=data["id"]).count() == 3
    assert wallet_of(personas).reserved_micros == 0
    audit_ok()


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"candidates": ["only one"]}, "candidates"),
        ({"models": MODELS}, None),  # both candidates and models
        ({"criteria": ["Not A Name"]}, "criteria.0"),
        ({"judge_model": "no-such-model"}, "judge_model"),
        ({"both_orders": "yes"}, "both_orders"),
    ],
)
def test_judge_bad_input(
    secret: str,
    live_gateway: LiveGateway,
    sandbox: SandboxServer,
    changes: dict[str, Any],
    param: str | None,
) -> None:
    before = sandbox.app.chat_calls
    response = post(live_gateway, "judge", secret, _judge_body("{}", **changes))
    assert response.status_code in (400, 404)
    assert response.json()["error"]["param"] == param
    assert sandbox.app.chat_calls == before
    assert not OrchestrationRun.objects.exists()


# --- blend ------------------------------------------------------------------------------------
def test_blend_synthesizes_one_answer_from_the_candidates(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    response = post(
        live_gateway,
        "blend",
        secret,
        {"models": MODELS, "messages": messages(), "max_tokens": 60, "synthesizer": "gpt-4o"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["model"] for c in body["candidates"]] == MODELS
    answer = body["answer"]
    assert (answer["model"], answer["source"]) == ("gpt-4o", "synthesis")
    assert answer["content"].startswith("Sandbox answer from gpt-4o")
    logs = RequestLog.objects.filter(parent_request_id=body["id"])
    assert logs.count() == 4
    synth = logs.get(request_id=f"{body['id']}.synth")
    # The synthesizer saw the candidates, fenced and labelled.
    prompt = synth.prompt[1]["content"]
    assert '<candidate label="C">' in prompt
    assert "Sandbox answer from mistral-small" in prompt
    spent = sum(log.cost_micros for log in logs)
    assert body["totals"]["cost"]["micros"] == spent
    assert wallet_of(personas).balance_micros == FUNDS - spent
    assert not Reservation.objects.filter(status=Reservation.Status.HELD).exists()
    audit_ok()


def test_blend_streams_candidates_then_the_synthesis(
    secret: str, live_gateway: LiveGateway
) -> None:
    with httpx.stream(
        "POST",
        f"{live_gateway.url}/api/v1/blend",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "models": MODELS[:2],
            "messages": messages(),
            "stream": True,
            "include_candidates": False,
        },
        timeout=20,
    ) as response:
        events = list(sse_events(response))
    names = [name for name, _ in events]
    assert names[-2:] == ["synthesis_done", "done"]
    last_model_done = max(i for i, n in enumerate(names) if n == "model_done")
    synth = [i for i, n in enumerate(names) if n == "synthesis_delta"]
    assert synth
    assert min(synth) > last_model_done
    text = "".join(data["text"] for name, data in events if name == "synthesis_delta")
    done = events[-1][1]
    assert done["answer"]["content"] == text
    assert "candidates" not in done


def test_blend_best_of_returns_the_judges_pick(secret: str, live_gateway: LiveGateway) -> None:
    verdict = json.dumps(_verdict({"A": 4, "B": 8}))
    response = post(
        live_gateway,
        "blend",
        secret,
        {
            "models": MODELS[:2],
            "messages": messages(f"Pick. {reply_marker(verdict)}"),
            "strategy": "best-of",
            "shuffle": False,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"]["source"] == "best-of"
    assert body["answer"]["index"] == 1 == body["ranking"][0]["index"]
    assert body["answer"]["content"] == body["candidates"][1]["content"]


def test_blend_synthesizer_failing_is_a_502_with_the_candidates_billed(
    secret: str, personas: Personas, live_gateway: LiveGateway, faults: FaultControl
) -> None:
    faults.set(provider="openai", model="gpt-4o", fault="http_500")
    response = post(
        live_gateway,
        "blend",
        secret,
        {"models": MODELS[1:], "messages": messages(), "synthesizer": "gpt-4o"},
    )
    assert response.status_code == 502
    logs = RequestLog.objects.filter(parent_request_id=response.headers["x-request-id"])
    assert logs.filter(status="ok").count() == 2
    spent = sum(log.cost_micros for log in logs)
    assert wallet_of(personas).balance_micros == FUNDS - spent > 0
    assert wallet_of(personas).reserved_micros == 0
    audit_ok()


def test_blend_bad_strategy(secret: str, live_gateway: LiveGateway) -> None:
    response = post(
        live_gateway,
        "blend",
        secret,
        {"models": MODELS, "messages": messages(), "strategy": "vote"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "strategy"
