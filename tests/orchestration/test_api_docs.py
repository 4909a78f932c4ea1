"""Compare, Blend and Judge in the API reference, against the real server: every answer (JSON,
each streamed event, errors, a run's record) matches the schema strictly, and the examples the
reference shows run as printed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.gateway.models import RequestLog
from apps.wallet.models import Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_api_docs_live import SchemaChecker, node_parses

from .conftest import FUNDS, MODELS, audit_ok, messages, reply_marker, sse_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

SUBPROCESS_TIMEOUT = 60
DOCS_BASE_URL = "https://llmwise.example"
RUN_OPERATIONS = ("compare", "blend", "judge")
CRITERIA = ("accuracy", "helpfulness", "clarity")
# Each streamed event's payload, by event name, as the operation's description lists them.
EVENT_PAYLOADS = {
    "run": "OrchestrationRunEvent",
    "delta": "OrchestrationDeltaEvent",
    "model_done": "OrchestrationCall",
    "synthesis_delta": "OrchestrationDeltaEvent",
    "synthesis_done": "OrchestrationAnswer",
    "verdict": "OrchestrationVerdict",
    "error": "OrchestrationErrorEvent",
}


def _verdict(scores: dict[str, int]) -> str:
    """What a judge answers: every criterion of each candidate label at one score."""
    return json.dumps(
        {
            "candidates": [
                {"label": label, "scores": dict.fromkeys(CRITERIA, score), "rationale": "ok"}
                for label, score in scores.items()
            ],
            "ranking": sorted(scores, key=lambda label: -scores[label]),
        }
    )


def _schema(gateway: LiveGateway) -> dict[str, Any]:
    return dict(httpx.get(f"{gateway.url}/api/schema", params={"format": "json"}).json())


def _check_stream(
    checker: SchemaChecker, response: httpx.Response, mode: str
) -> list[tuple[str, dict[str, Any]]]:
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = list(sse_events(response))
    documented = checker.operation(f"/api/v1/{mode}", "post")["responses"]["200"]["content"]
    names = documented["text/event-stream"]["schema"]["properties"]["event"]["enum"]
    for name, data in events:
        assert name in names, name
        payload = EVENT_PAYLOADS.get(name, f"{mode.capitalize()}Result")
        checker.check(data, payload)
    return events


def test_orchestration_answers_match_the_schema(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    checker = SchemaChecker(_schema(live_gateway))
    auth = {"Authorization": f"Bearer {secret}"}
    ask = messages("Explain recursion in one sentence.")
    with httpx.Client(base_url=live_gateway.url, headers=auth, timeout=20) as client:
        compare = client.post("/api/v1/compare", json={"models": MODELS, "messages": ask})
        assert compare.status_code == 200, compare.text
        checker.check(compare.json(), "CompareResult")
        with client.stream(
            "POST", "/api/v1/compare", json={"models": MODELS[:2], "messages": ask, "stream": True}
        ) as streamed:
            names = [name for name, _ in _check_stream(checker, streamed, "compare")]
        assert (names[0], names[-1]) == ("run", "done")

        blend = client.post("/api/v1/blend", json={"models": MODELS[:2], "messages": ask})
        assert blend.status_code == 200, blend.text
        checker.check(blend.json(), "BlendResult")
        assert blend.json()["answer"]["source"] == "synthesis"
        with client.stream(
            "POST",
            "/api/v1/blend",
            json={"models": MODELS[:2], "messages": ask, "stream": True},
        ) as streamed:
            assert "synthesis_done" in {n for n, _ in _check_stream(checker, streamed, "blend")}
        pick = messages(f"Pick one. {reply_marker(_verdict({'A': 3, 'B': 8}))}")
        best_of = client.post(
            "/api/v1/blend",
            json={"models": MODELS[:2], "messages": pick, "strategy": "best-of"},
        )
        assert best_of.status_code == 200, best_of.text
        checker.check(best_of.json(), "BlendResult")
        assert best_of.json()["answer"]["source"] == "best-of"

        judged = messages(f"Which is right? {reply_marker(_verdict({'A': 9, 'B': 2}))}")
        supplied = client.post(
            "/api/v1/judge",
            json={
                "messages": judged,
                "candidates": ["Paris.", {"content": "Lyon.", "model": "draft"}],
            },
        )
        assert supplied.status_code == 200, supplied.text
        checker.check(supplied.json(), "JudgeResult")
        with client.stream(
            "POST",
            "/api/v1/judge",
            json={"messages": judged, "models": MODELS[:2], "stream": True},
        ) as streamed:
            assert "verdict" in {n for n, _ in _check_stream(checker, streamed, "judge")}

        record = client.get(f"/api/v1/orchestrations/{compare.json()['id']}")
        assert record.status_code == 200
        checker.check(record.json(), "OrchestrationRunRecord")
        assert len(record.json()["children"]) == len(MODELS)

        # Errors: each status is documented for its operation, each body is the envelope.
        for response, path, method in (
            (client.post("/api/v1/compare", json={"models": MODELS}), "/api/v1/compare", "post"),
            (
                client.post("/api/v1/blend", json={"models": ["gpt-9", "x"], "messages": ask}),
                "/api/v1/blend",
                "post",
            ),
            (
                client.post("/api/v1/judge", json={"messages": ask, "oops": 1}),
                "/api/v1/judge",
                "post",
            ),
            (
                client.get("/api/v1/orchestrations/req_nothing_here"),
                "/api/v1/orchestrations/{request_id}",
                "get",
            ),
            (
                httpx.post(f"{live_gateway.url}/api/v1/compare", json={}),
                "/api/v1/compare",
                "post",
            ),
        ):
            assert response.status_code in (400, 401, 404), response.text
            documented = checker.operation(path, method)["responses"]
            assert str(response.status_code) in documented, (path, response.status_code)
            checker.check(response.json(), "ErrorEnvelope")

    logs = RequestLog.objects.filter(organization=personas.org)
    wallet = Wallet.objects.get(organization=personas.org)
    assert wallet.balance_micros == FUNDS - sum(log.cost_micros for log in logs)
    assert wallet.reserved_micros == 0
    audit_ok()


def _samples(schema: dict[str, Any], path: str, method: str) -> dict[str, str]:
    samples = schema["paths"][path][method]["x-codeSamples"]
    return {sample["label"]: sample["source"] for sample in samples}


def test_the_references_examples_run_as_printed(
    secret: str,
    personas: Personas,
    live_gateway: LiveGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    schema = _schema(live_gateway)
    env = {"PATH": "/usr/bin:/bin", "LLMWISE_API_KEY": secret}
    for mode in RUN_OPERATIONS:
        samples = _samples(schema, f"/api/v1/{mode}", "post")
        assert set(samples) == {"curl", "Python", "Node.js"}
        for source in samples.values():
            assert f"{live_gateway.url}/api/v1/{mode}" in source
            assert "LLMWISE_API_KEY" in source
        printed = subprocess.run(
            ["/bin/bash", "-c", samples["curl"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=True,
        ).stdout
        answer = json.loads(printed)
        # A judge that answers something other than a verdict makes the judge example end in
        # the documented 502 rather than a ranking; anything else is a failure.
        if "error" in answer:
            assert (mode, answer["error"]["code"]) == ("judge", "judge_output_invalid"), answer
        else:
            assert answer["object"] == f"orchestration.{mode}", answer

    monkeypatch.setenv("LLMWISE_API_KEY", secret)
    python = _samples(schema, "/api/v1/compare", "post")["Python"]
    exec(compile(python, "compare-sample", "exec"), {"__name__": "compare_sample"})  # noqa: S102
    assert capsys.readouterr().out.startswith("200 {'id': ")
    detail = _samples(schema, "/api/v1/orchestrations/{request_id}", "get")["Python"]
    exec(compile(detail, "run-sample", "exec"), {"__name__": "run_sample"})  # noqa: S102
    assert capsys.readouterr().out.startswith("404 {'error': ")  # the example id is no run

    if shutil.which("node") is not None:  # parsed, not run
        for mode in RUN_OPERATIONS:
            source = _samples(schema, f"/api/v1/{mode}", "post")["Node.js"]
            node_parses(source, tmp_path / f"{mode}.mjs")

    logs = RequestLog.objects.filter(organization=personas.org)
    wallet = Wallet.objects.get(organization=personas.org)
    assert wallet.balance_micros == FUNDS - sum(log.cost_micros for log in logs)
    audit_ok()


def _doc_examples() -> dict[str, str]:
    """The code blocks of docs/orchestration.md's Examples section, by language."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "orchestration.md").read_text()
    section = text.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)
    return dict(blocks)


def test_the_orchestration_guides_examples_work_against_the_server(
    secret: str,
    personas: Personas,
    live_gateway: LiveGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    examples = {
        language: code.replace(DOCS_BASE_URL, live_gateway.url)
        for language, code in _doc_examples().items()
    }
    assert set(examples) == {"sh", "python", "js"}
    printed = subprocess.run(
        ["/bin/bash", "-c", examples["sh"]],
        env={"PATH": "/usr/bin:/bin", "LLMWISE_API_KEY": secret},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=True,
    ).stdout
    assert '"object": "orchestration.compare"' in printed
    assert "event: synthesis_delta" in printed
    assert '"code": "run_not_found"' in printed  # the example id is nobody's run

    monkeypatch.setenv("LLMWISE_API_KEY", secret)
    exec(compile(examples["python"], "guide", "exec"), {"__name__": "guide"})  # noqa: S102
    out = capsys.readouterr().out
    assert "gpt-4o-mini" in out
    assert re.search(r"\[3 calls, \d+\.\d{6} USD\]", out), out

    if shutil.which("node") is not None:
        node_parses(examples["js"], tmp_path / "compare.mjs")
    audit_ok()
