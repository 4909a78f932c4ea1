"""OpenAPI description of Compare, Blend and Judge (``/api/v1/compare``, ``/blend``, ``/judge``)
and of a run's record (``/api/v1/orchestrations/{request_id}``).

They are async Django views like the gateway's chat endpoints, so they are described by hand
with the gateway's builders (:mod:`apps.gateway.openapi`) and merged into ``/api/schema`` by
:func:`orchestration_paths_hook`, a ``POSTPROCESSING_HOOKS`` entry listed after the gateway's.
The vocabulary is the one of ``docs/orchestration.md``; ``tests/gateway/test_api_docs_live.py``
checks real answers against these schemas, and ``tests/security/test_api_fuzz.py`` fuzzes them.
"""

from __future__ import annotations

from typing import Any, Final

from django.conf import settings

from apps.gateway.openapi import (
    CALL_ERRORS,
    ERROR_OBJECT,
    EXAMPLE_REQUEST_ID,
    PathBuilder,
    Schema,
    array,
    count,
    enum,
    error_responses,
    flag,
    hand_written_merge,
    native_chat_properties,
    nullable,
    obj,
    ok_response,
    operation,
    ref,
    server_url,
    sse_event,
    string,
    strings,
)

from .apis import (
    CRITERION_DESCRIPTION_MAX,
    CRITERION_NAME,
    MAX_CRITERIA,
    MIN_CANDIDATES,
    STRATEGIES,
)
from .models import OrchestrationRun
from .prompts import DEFAULT_CRITERIA, LABELS

TAG: Final = "Orchestration"
TAGS: Final = [
    {
        "name": TAG,
        "description": "One prompt to several models: side by side (Compare), merged into one "
        "answer (Blend), or scored by a judge model (Judge). One hold covers the whole "
        "fan-out; every call is billed and logged like a single chat.",
    }
]
RUN_DETAIL_ERRORS: Final = (401, 404)

# What the errors mean here (the chat endpoints' wording is kept for the other statuses).
ERROR_MEANINGS: Final[dict[int, str]] = {
    400: "Invalid body: a missing or mistyped field, an unknown field (`unknown_parameter`), "
    "fewer than 2 or repeated models, options of another mode or strategy, or `max_tokens` "
    "above a model's maximum. Nothing is charged.",
    402: "Not enough credit for the hold of the whole fan-out (every call the run may make), or "
    "a key's spend cap is reached. Nothing is sent upstream.",
    403: "This API key may not use one of the models (`param` names it). Nothing is charged.",
    404: "Unknown model id; `param` names the field (`models.1`, `judge_model`, `synthesizer`).",
    429: "Too many runs in flight for the organization (`orchestration_concurrency`), or a rate "
    "limit of the key or the organization. Wait `Retry-After` seconds.",
    502: "No candidate answered (`all_models_failed`), the judge's answer could not be read "
    "(`judge_output_invalid`), or the synthesizer's or judge's provider failed. Each call made "
    "was billed for what it used.",
    503: "The synthesizer's or judge's provider is overloaded; retry after `Retry-After` seconds.",
    504: "The synthesizer or judge was still running at the run's deadline "
    "(`orchestration_timeout`); it was billed for what it streamed.",
}
RUN_NOT_FOUND: Final = {
    404: "No run with this id in the key's organization (another organization's runs are not "
    "found either)."
}

STREAM_DESCRIPTION: Final = """
With `"stream": true` the answer is `text/event-stream`, one `event:` and `data:` (JSON) per
event: `run` first (`OrchestrationRunEvent`: the run's id, models and what was held), then as the
run goes `delta` (`OrchestrationDeltaEvent`, a candidate's text; models interleave), `model_done`
(`OrchestrationCall`, a candidate as it ends), for Blend `synthesis_delta` and `synthesis_done`,
for Judge and best-of `verdict` (`OrchestrationVerdict`), and last exactly one of `done` (the
whole JSON result) or `error` (`OrchestrationErrorEvent`). Failures before the run starts (bad
input, no credit) answer a normal JSON error with its status. Closing the connection cancels
the calls still running; each is billed for what it streamed and the rest of the hold released.
""".strip()

# A Compare stream of two models, cut short (`…`) where the payloads repeat.
STREAM_EXAMPLE: Final = (
    'event: run\ndata: {"id":"req_1","mode":"compare","models":["gpt-4o-mini",'
    '"claude-haiku-4.5"],"reserved":{"micros":1450,"usd":"0.001450","charged":false}}\n\n'
    'event: delta\ndata: {"index":1,"model":"claude-haiku-4.5","text":"Recursion is"}\n\n'
    'event: delta\ndata: {"index":0,"model":"gpt-4o-mini","text":"A function that"}\n\n'
    'event: model_done\ndata: {"index":0,"model":"gpt-4o-mini","request_id":"req_1.0",'
    '"content":"A function that calls itself.","finish_reason":"stop","usage":{…},'
    '"cost":{"micros":21,"usd":"0.000021","charged":true},"latency_ms":380,"ttft_ms":95,'
    '"error":null}\n\n'
    'event: model_done\ndata: {"index":1,…}\n\n'
    'event: done\ndata: {"id":"req_1","object":"orchestration.compare","mode":"compare",'
    '"results":[…],"totals":{…}}\n\n'
)


def _call_properties() -> dict[str, Schema]:
    return {
        "index": count("The candidate's place in `models` (the synthesizer comes after them)."),
        "model": string("The model that answered (a failover chain's member that answered)."),
        "request_id": string(
            "The call's own request id: the run's id and `.0`, `.1`, …, `.synth`, `.judge0`.",
            example=f"{EXAMPLE_REQUEST_ID}.0",
        ),
        "content": string("The answer's text (empty when the call failed before any)."),
        "finish_reason": nullable(ref("FinishReason")),
        "usage": ref("NativeUsage"),
        "cost": ref("NativeCost"),
        "latency_ms": count(),
        "ttft_ms": nullable(count("Time to the first token.")),
        "error": nullable({**ERROR_OBJECT, "description": "Why the call failed, else null."}),
    }


def _result(mode: str, properties: dict[str, Schema], required: list[str]) -> Schema:
    return obj(
        {
            "id": string("The run's request id (`x-request-id`).", example=EXAMPLE_REQUEST_ID),
            "object": enum(f"orchestration.{mode}"),
            "mode": enum(mode),
            **properties,
            "totals": ref("OrchestrationTotals"),
        },
        ["id", "object", "mode", *required, "totals"],
    )


def _verdict_properties(*, winner: bool = True) -> dict[str, Schema]:
    """The judge's verdict; Blend's best-of answers with the winner itself instead of its index."""
    properties = {"ranking": array(ref("OrchestrationRanking"), "Best first.")}
    if winner:
        properties["winner"] = nullable(count("The index of the best candidate."))
    properties["judge"] = ref("OrchestrationJudgeInfo")
    return properties


def _chat_fields_example(question: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "messages": [{"role": "user", "content": question}], "max_tokens": 200}


def _judge_options() -> dict[str, Schema]:
    criterion_name = string(pattern=CRITERION_NAME.pattern)
    defaults = ", ".join(f"`{c.name}`" for c in DEFAULT_CRITERIA)
    return {
        "judge_model": string(
            f"The judge (default `{settings.ORCHESTRATION_DEFAULT_JUDGE}`).",
            example="gpt-4o-mini",
        ),
        "criteria": array(
            {
                "anyOf": [
                    criterion_name,
                    obj(
                        {
                            "name": criterion_name,
                            "description": string(maxLength=CRITERION_DESCRIPTION_MAX),
                        },
                        ["name"],
                        additionalProperties=False,
                    ),
                ]
            },
            f"Added to the defaults ({defaults}): names, or `{{name, description}}` objects; "
            f"at most {MAX_CRITERIA} criteria in all.",
        ),
        "both_orders": flag(
            "Judge twice, on opposite candidate orders, and average (cancels position bias).",
            default=False,
        ),
        "shuffle": flag("Show the candidates in a random order.", default=True),
        "seed": {"type": "integer", "description": "Makes the shuffle reproducible."},
    }


def _models_field() -> Schema:
    most: int = settings.ORCHESTRATION_MAX_MODELS
    return strings(
        items={"minLength": 1},
        minItems=MIN_CANDIDATES,
        maxItems=most,
        uniqueItems=True,
        description=f"{MIN_CANDIDATES} to {most} distinct model ids or aliases, each answering "
        "the same conversation.",
    )


def _request(
    description: str, properties: dict[str, Schema], required: list[str], example: Schema
) -> Schema:
    return obj(
        {**native_chat_properties(), **properties},
        ["messages", *required],
        description + " The conversation and generation fields are the native chat's "
        "(`max_tokens` applies to each call); unknown fields answer 400 `unknown_parameter`.",
        additionalProperties=False,
        example=example,
    )


def orchestration_schemas() -> dict[str, Schema]:
    """The component schemas (some bounds come from the ``ORCHESTRATION_*`` settings)."""
    most_candidates = min(settings.ORCHESTRATION_MAX_CANDIDATES, len(LABELS))
    longest: int = settings.ORCHESTRATION_CANDIDATE_MAX_CHARS
    candidate_text = string(minLength=1, maxLength=longest)
    return {
        # --- requests ---
        "CompareRequest": _request(
            "Every model answers the same conversation, concurrently.",
            {"models": _models_field()},
            ["models"],
            _chat_fields_example(
                "Explain recursion in one sentence.", models=["gpt-4o-mini", "claude-haiku-4.5"]
            ),
        ),
        "BlendRequest": _request(
            "Candidates from every model, then one answer: merged by a synthesizer model "
            '(`"strategy": "synthesize"`) or the candidate a judge ranks best (`"best-of"`, '
            "which takes the judge options).",
            {
                "models": _models_field(),
                "strategy": enum(*STRATEGIES, description="Default `synthesize`."),
                "synthesizer": string(
                    "The merging model, synthesize only "
                    f"(default `{settings.ORCHESTRATION_DEFAULT_SYNTHESIZER}`).",
                    example="gpt-4o-mini",
                ),
                "include_candidates": flag(
                    "Return the candidates next to the answer.", default=True
                ),
                **_judge_options(),
            },
            ["models"],
            _chat_fields_example(
                "Give three tips for writing clear error messages.",
                models=["gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash"],
                strategy="synthesize",
            ),
        ),
        "JudgeRequest": _request(
            "A judge model scores and ranks answers: give exactly one of `candidates` (answers "
            "you have) or `models` (generated first, as in Compare).",
            {
                "candidates": array(
                    {
                        "anyOf": [
                            candidate_text,
                            obj(
                                {
                                    "content": candidate_text,
                                    "model": string("A label for the answer."),
                                },
                                ["content"],
                                additionalProperties=False,
                            ),
                        ]
                    },
                    f"{MIN_CANDIDATES} to {most_candidates} answers: strings, or "
                    "`{content, model}` objects.",
                    minItems=MIN_CANDIDATES,
                    maxItems=most_candidates,
                ),
                "models": _models_field(),
                **_judge_options(),
            },
            [],
            _chat_fields_example(
                "What is the capital of Australia?",
                candidates=[
                    "Canberra is the capital of Australia.",
                    {"content": "Sydney.", "model": "my-draft"},
                ],
                judge_model="gpt-4o-mini",
            ),
        ),
        # --- results ---
        "OrchestrationCall": obj(
            _call_properties(),
            list(_call_properties()),
            "One call of the run (a candidate, the synthesis or a judge reading) as it ended. "
            "A failed call has `error` and costs only what it streamed.",
        ),
        "OrchestrationAnswer": obj(
            {
                **_call_properties(),
                "source": enum(
                    "synthesis",
                    "best-of",
                    description="The synthesizer's answer, or the candidate the judge ranked best.",
                ),
            },
            [*_call_properties(), "source"],
        ),
        "OrchestrationSuppliedCandidate": obj(
            {
                "index": count(),
                "model": nullable(string("The label it was given.")),
                "content": string(),
            },
            ["index", "model", "content"],
            "A candidate given in the request (nothing was generated for it).",
        ),
        "OrchestrationRanking": obj(
            {
                "index": count("The candidate."),
                "model": nullable(string()),
                "rank": count(minimum=1),
                "overall": {"type": "number", "description": "Mean of the criteria's scores."},
                "scores": {
                    "type": "object",
                    "description": "Criterion → score, 0 to 10 (averaged over both orders).",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 10},
                },
                "rationale": string(),
            },
            ["index", "model", "rank", "overall", "scores", "rationale"],
        ),
        "OrchestrationJudgeInfo": obj(
            {
                "model": string(),
                "criteria": array(obj({"name": string(), "description": string()})),
                "both_orders": flag(),
                "orders_shown": array(
                    array(count()), "The candidate indexes in the order each reading saw them."
                ),
                "request_ids": strings(description="The judge calls' request ids."),
            },
            ["model", "criteria", "both_orders", "orders_shown", "request_ids"],
        ),
        "OrchestrationTotals": obj(
            {
                "calls": count(),
                "failed_calls": count(),
                "usage": ref("NativeUsage"),
                "cost": ref("NativeCost"),
                "charged_micros": count("What left the wallet (BYOK calls excluded)."),
                "latency_ms": count(),
            },
            ["calls", "failed_calls", "usage", "cost", "charged_micros", "latency_ms"],
            "The whole run: every call's usage and cost summed.",
        ),
        "CompareResult": _result(
            OrchestrationRun.Mode.COMPARE,
            {"results": array(ref("OrchestrationCall"), "One per model, in request order.")},
            ["results"],
        ),
        "BlendResult": _result(
            OrchestrationRun.Mode.BLEND,
            {
                "answer": ref("OrchestrationAnswer"),
                "candidates": array(
                    ref("OrchestrationCall"), "Unless `include_candidates` was false."
                ),
                **_verdict_properties(winner=False),
            },
            ["answer"],
        ),
        "JudgeResult": _result(
            OrchestrationRun.Mode.JUDGE,
            {
                "candidates": array(
                    {
                        "anyOf": [
                            ref("OrchestrationCall"),
                            ref("OrchestrationSuppliedCandidate"),
                        ]
                    },
                    "Generated (as in Compare) or as supplied.",
                ),
                **_verdict_properties(),
            },
            ["candidates", "ranking", "winner", "judge"],
        ),
        # --- stream events ---
        "OrchestrationRunEvent": obj(
            {
                "id": string(),
                "mode": enum(*OrchestrationRun.Mode.values),
                "models": strings(),
                "reserved": ref("NativeCost"),
            },
            ["id", "mode", "models", "reserved"],
            "`event: run`, first: the run's id and the hold covering every call it may make.",
        ),
        "OrchestrationDeltaEvent": obj(
            {"index": count(), "model": string(), "text": string()},
            ["index", "model", "text"],
            "`event: delta` (a candidate) or `synthesis_delta`: the next piece of text.",
        ),
        "OrchestrationVerdict": obj(
            _verdict_properties(),
            list(_verdict_properties()),
            "`event: verdict`: the judge's ranking (Judge, and Blend's best-of).",
        ),
        "OrchestrationErrorEvent": obj(
            {"error": ERROR_OBJECT, "totals": ref("OrchestrationTotals")},
            ["error", "totals"],
            "`event: error`, last: why the run failed, and what its calls used.",
        ),
        # --- the record ---
        "OrchestrationRunRecord": obj(
            {
                "id": string(example=EXAMPLE_REQUEST_ID),
                "object": enum("orchestration.run"),
                "mode": enum(*OrchestrationRun.Mode.values),
                "status": enum(*OrchestrationRun.Status.values),
                "models": strings(),
                "options": {
                    "type": "object",
                    "description": "The run's choices (strategy, judge, criteria, ...); never "
                    "texts.",
                    "additionalProperties": True,
                },
                "stream": flag(),
                "error_code": nullable(string()),
                "reserved_micros": count(),
                "cost_micros": count(),
                "prompt_tokens": count(),
                "completion_tokens": count(),
                "calls": count(),
                "failed_calls": count(),
                "latency_ms": count(),
                "created_at": string(format="date-time"),
                "finished_at": nullable(string(format="date-time")),
                "children": array(
                    obj(
                        {
                            "request_id": string(),
                            "model": string(),
                            "status": enum("ok", "error"),
                            "http_status": count(),
                            "error_code": nullable(string()),
                            "prompt_tokens": count(),
                            "completion_tokens": count(),
                            "cost_micros": count(),
                            "latency_ms": count(),
                        },
                        [
                            "request_id",
                            "model",
                            "status",
                            "http_status",
                            "error_code",
                            "prompt_tokens",
                            "completion_tokens",
                            "cost_micros",
                            "latency_ms",
                        ],
                    ),
                    "The run's calls, oldest first (metadata only: texts are never kept here).",
                ),
            },
            [
                "id",
                "object",
                "mode",
                "status",
                "models",
                "options",
                "stream",
                "error_code",
                "reserved_micros",
                "cost_micros",
                "prompt_tokens",
                "completion_tokens",
                "calls",
                "failed_calls",
                "latency_ms",
                "created_at",
                "finished_at",
                "children",
            ],
        ),
    }


# The events of generating candidates (every mode that has `models`), name → payload.
CANDIDATE_EVENTS: Final = {
    "delta": "`OrchestrationDeltaEvent`",
    "model_done": "`OrchestrationCall`",
}


def _run_operation(mode: str, summary: str, description: str, events: dict[str, str]) -> Schema:
    name = mode.capitalize()
    return {
        "post": operation(
            operation_id=f"orchestration_{mode}_create",
            tag=TAG,
            summary=summary,
            description=description + " See docs/orchestration.md.\n\n" + STREAM_DESCRIPTION,
            body=f"{name}Request",
            ok=ok_response(
                "The finished run (`application/json`; some calls may have failed: "
                "`totals.failed_calls`), or with `stream: true` its Server-Sent Events, each "
                "event named with its payload below.",
                body=f"{name}Result",
                stream=sse_event(
                    {
                        "run": "`OrchestrationRunEvent`",
                        **events,
                        "done": f"`{name}Result`",
                        "error": "`OrchestrationErrorEvent`",
                    }
                ),
                stream_example=STREAM_EXAMPLE,
            ),
            errors=error_responses(CALL_ERRORS, meanings=ERROR_MEANINGS),
        )
    }


def _compare() -> Schema:
    return _run_operation(
        OrchestrationRun.Mode.COMPARE,
        "Compare models side by side",
        "Sends one conversation to 2 or more models at once and returns every answer with its "
        "own usage, cost, latency and time to first token.",
        CANDIDATE_EVENTS,
    )


def _blend() -> Schema:
    return _run_operation(
        OrchestrationRun.Mode.BLEND,
        "Blend several models' answers into one",
        "Collects candidates from every model, then returns one answer: a synthesizer model "
        "merges them, or (`best-of`) a judge picks the best.",
        {
            **CANDIDATE_EVENTS,
            "synthesis_delta": "`OrchestrationDeltaEvent`",
            "synthesis_done": "`OrchestrationAnswer`",
            "verdict": "`OrchestrationVerdict` (best-of)",
        },
    )


def _judge() -> Schema:
    return _run_operation(
        OrchestrationRun.Mode.JUDGE,
        "Judge and rank answers",
        "A judge model scores each candidate 0 to 10 per criterion and ranks them; candidates "
        "are supplied, or generated by `models` first. Position bias is countered by shuffling "
        "(and `both_orders`).",
        {**CANDIDATE_EVENTS, "verdict": "`OrchestrationVerdict`"},
    )


def _run_detail() -> Schema:
    return {
        "get": operation(
            operation_id="orchestration_run_retrieve",
            tag=TAG,
            summary="Show a run and its calls",
            description="One Compare / Blend / Judge run of the key's organization, by its "
            "request id (the `id` of its result, and its `x-request-id`): status, options, "
            "totals and every child call's metadata. Texts are not kept here; a child's own "
            "log row (`GET /api/v1/requests/{request_id}`) has them unless retention is off.",
            parameters=[
                {
                    "name": "request_id",
                    "in": "path",
                    "required": True,
                    "schema": string(example=EXAMPLE_REQUEST_ID),
                }
            ],
            ok=ok_response("The run.", body="OrchestrationRunRecord"),
            errors=error_responses(RUN_DETAIL_ERRORS, meanings=RUN_NOT_FOUND),
        )
    }


ORCHESTRATION_PATHS: Final[dict[str, PathBuilder]] = {
    "/api/v1/compare": _compare,
    "/api/v1/blend": _blend,
    "/api/v1/judge": _judge,
    "/api/v1/orchestrations/{request_id}": _run_detail,
}


def orchestration_paths_hook(
    result: Schema, generator: Any, request: Any, public: bool, **kwargs: Any
) -> Schema:
    """drf-spectacular postprocessing hook: add the orchestration endpoints (after the gateway's
    hook, whose components they use)."""
    hand_written_merge(
        result,
        builders=ORCHESTRATION_PATHS,
        schemas=orchestration_schemas(),
        tags=TAGS,
        base_url=server_url(request),
    )
    return result
