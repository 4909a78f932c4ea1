"""``POST /api/v1/compare``, ``/api/v1/blend``, ``/api/v1/judge`` (JSON or SSE) and
``GET /api/v1/orchestrations/<id>`` (a run and its child calls). API-key authenticated, like the
native chat endpoint; the vocabulary is in ``docs/orchestration.md``."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.models import ApiKey
from apps.gateway.native_api import parse_native_chat
from apps.gateway.openai_api import MethodNotAllowed, authenticate, json_body
from llmwise.errors import ApplicationError, application_error_response

from . import runner, selectors
from .models import OrchestrationRun
from .prompts import DEFAULT_CRITERIA, LABELS, Criterion

# The native chat fields every mode takes (the conversation and generation parameters).
CHAT_FIELDS: Final = frozenset(
    {"messages", "stream", "max_tokens", "temperature", "top_p", "stop", "user"}
)
JUDGE_FIELDS: Final = frozenset({"judge_model", "criteria", "both_orders", "shuffle", "seed"})
MODE_FIELDS: Final[dict[str, frozenset[str]]] = {
    OrchestrationRun.Mode.COMPARE: frozenset({"models"}),
    OrchestrationRun.Mode.BLEND: frozenset(
        {"models", "strategy", "synthesizer", "include_candidates"} | JUDGE_FIELDS
    ),
    OrchestrationRun.Mode.JUDGE: frozenset({"models", "candidates"} | JUDGE_FIELDS),
}
STRATEGIES: Final = ("synthesize", "best-of")
MIN_CANDIDATES: Final = 2
MAX_CRITERIA: Final = 8
CRITERION_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CRITERION_DESCRIPTION_MAX: Final = 300


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApplicationError:
    return ApplicationError(message, code=code, param=param)


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false.", name)
    return value


def _model_list(body: dict[str, Any], *, required: bool) -> tuple[str, ...]:
    raw = body.get("models")
    if raw is None and not required:
        return ()
    most: int = settings.ORCHESTRATION_MAX_MODELS
    if not isinstance(raw, list) or not all(isinstance(m, str) and m.strip() for m in raw):
        raise _bad("models must be a list of model ids.", "models")
    models = tuple(m.strip() for m in raw)
    if not MIN_CANDIDATES <= len(models) <= most:
        raise _bad(
            f"models: give {MIN_CANDIDATES} to {most} models ({len(models)} given).",
            "models",
            "too_many_models" if len(models) > most else "invalid_request",
        )
    if len(set(models)) != len(models):
        raise _bad("models must not repeat a model.", "models")
    return models


def _criteria(body: dict[str, Any]) -> tuple[Criterion, ...]:
    """The default criteria, plus the caller's: names, or ``{"name", "description"}``."""
    raw = body.get("criteria", [])
    if not isinstance(raw, list):
        raise _bad("criteria must be a list of names or {name, description} objects.", "criteria")
    criteria = {c.name: c for c in DEFAULT_CRITERIA}
    for index, item in enumerate(raw):
        param = f"criteria.{index}"
        if isinstance(item, str):
            name, description = item.strip().lower(), ""
        elif isinstance(item, dict) and set(item) <= {"name", "description"}:
            name = str(item.get("name", "")).strip().lower()
            description = item.get("description", "")
            if not isinstance(description, str) or len(description) > CRITERION_DESCRIPTION_MAX:
                raise _bad(
                    f"description: a string of at most {CRITERION_DESCRIPTION_MAX} characters.",
                    param,
                )
        else:
            raise _bad("A criterion is a name or a {name, description} object.", param)
        if not CRITERION_NAME.match(name):
            raise _bad(
                "A criterion name is 1 to 32 lowercase letters, digits or _ (a letter first).",
                param,
            )
        if name not in criteria or description:
            criteria[name] = Criterion(name, description.strip() or name.replace("_", " "))
    if len(criteria) > MAX_CRITERIA:
        raise _bad(f"At most {MAX_CRITERIA} criteria, the defaults included.", "criteria")
    return tuple(criteria.values())


def _judge_options(body: dict[str, Any]) -> runner.JudgeOptions:
    model = body.get("judge_model", settings.ORCHESTRATION_DEFAULT_JUDGE)
    if not isinstance(model, str) or not model.strip():
        raise _bad("judge_model must be a model id.", "judge_model")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed must be an integer.", "seed")
    return runner.JudgeOptions(
        model=model.strip(),
        criteria=_criteria(body),
        both_orders=_flag(body, "both_orders", False),
        shuffle=_flag(body, "shuffle", True),
        seed=seed,
    )


def _supplied(body: dict[str, Any]) -> tuple[runner.SuppliedCandidate, ...]:
    raw = body.get("candidates")
    most = min(settings.ORCHESTRATION_MAX_CANDIDATES, len(LABELS))
    longest: int = settings.ORCHESTRATION_CANDIDATE_MAX_CHARS
    if not isinstance(raw, list) or not MIN_CANDIDATES <= len(raw) <= most:
        raise _bad(f"candidates: give {MIN_CANDIDATES} to {most} answers.", "candidates")
    out = []
    for index, item in enumerate(raw):
        param = f"candidates.{index}"
        if isinstance(item, str):
            item = {"content": item}
        if not isinstance(item, dict) or not set(item) <= {"content", "model"}:
            raise _bad("A candidate is a string or a {content, model} object.", param)
        content, model = item.get("content"), item.get("model")
        if not isinstance(content, str) or not content.strip() or len(content) > longest:
            raise _bad(f"content: a non-empty string of at most {longest} characters.", param)
        if model is not None and not isinstance(model, str):
            raise _bad("model must be a string (a label for the answer).", param)
        out.append(runner.SuppliedCandidate(content=content, model=model))
    return tuple(out)


def parse_run(body: dict[str, Any], *, mode: str) -> tuple[runner.RunSpec, bool]:
    """Validate a Compare / Blend / Judge body: a :class:`runner.RunSpec` and the stream flag."""
    allowed = CHAT_FIELDS | MODE_FIELDS[mode]
    for name in body:
        if name not in allowed:
            raise _bad(
                f"Unknown field {name!r}. Allowed: {', '.join(sorted(allowed))}.",
                name,
                "unknown_parameter",
            )
    chat_body = {k: v for k, v in body.items() if k in CHAT_FIELDS}
    # The conversation and parameters are checked exactly as for one chat (the model per call).
    chat = parse_native_chat({**chat_body, "model": "orchestration"})
    stream = chat.stream
    if mode == OrchestrationRun.Mode.COMPARE:
        return runner.RunSpec(mode=mode, chat=chat, models=_model_list(body, required=True)), stream
    if mode == OrchestrationRun.Mode.JUDGE:
        if ("models" in body) == ("candidates" in body):
            raise _bad("Give either candidates (answers to judge) or models to generate them.")
        supplied = _supplied(body) if "candidates" in body else ()
        models = _model_list(body, required=not supplied)
        spec = runner.RunSpec(
            mode=mode, chat=chat, models=models, supplied=supplied, judge=_judge_options(body)
        )
        return spec, stream
    strategy = body.get("strategy", "synthesize")
    if strategy not in STRATEGIES:
        raise _bad(f"strategy must be one of {', '.join(STRATEGIES)}.", "strategy")
    synthesizer = body.get("synthesizer", settings.ORCHESTRATION_DEFAULT_SYNTHESIZER)
    if not isinstance(synthesizer, str) or not synthesizer.strip():
        raise _bad("synthesizer must be a model id.", "synthesizer")
    if strategy == "synthesize" and any(name in body for name in JUDGE_FIELDS):
        raise _bad("Judge options apply to strategy 'best-of' only.", "strategy")
    if strategy == "best-of" and "synthesizer" in body:
        raise _bad("synthesizer applies to strategy 'synthesize' only.", "synthesizer")
    spec = runner.RunSpec(
        mode=mode,
        chat=chat,
        models=_model_list(body, required=True),
        strategy=strategy,
        synthesizer=synthesizer.strip() if strategy == "synthesize" else None,
        judge=_judge_options(body) if strategy == "best-of" else None,
        include_candidates=_flag(body, "include_candidates", True),
    )
    return spec, stream


async def sse(run: runner.Run) -> AsyncIterator[bytes]:
    events = cast(AsyncGenerator[tuple[str, dict[str, Any]], None], run.events())
    try:
        async for name, data in events:
            text = json.dumps(data, separators=(",", ":"))
            yield f"event: {name}\ndata: {text}\n\n".encode()
    finally:
        await events.aclose()


async def _run_view(request: HttpRequest, mode: str) -> HttpResponseBase:
    request_id: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "POST":
            raise MethodNotAllowed("Use POST.")
        api_key = await authenticate(request)
        spec, stream = parse_run(json_body(request), mode=mode)
        run = await runner.run_start(
            api_key=api_key, spec=spec, request_id=request_id, endpoint=f"api.{mode}", stream=stream
        )
        if stream:
            return StreamingHttpResponse(
                sse(run), content_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        body = await run.collect()
    except ApplicationError as exc:
        return application_error_response(exc, request_id=request_id)
    return JsonResponse(body)


@csrf_exempt
async def compare(request: HttpRequest) -> HttpResponseBase:
    return await _run_view(request, OrchestrationRun.Mode.COMPARE)


@csrf_exempt
async def blend(request: HttpRequest) -> HttpResponseBase:
    return await _run_view(request, OrchestrationRun.Mode.BLEND)


@csrf_exempt
async def judge(request: HttpRequest) -> HttpResponseBase:
    return await _run_view(request, OrchestrationRun.Mode.JUDGE)


async def run_detail(request: HttpRequest, request_id: str) -> HttpResponseBase:
    """A run of the calling key's organization and its child calls (404 for anyone else's)."""
    rid: str = request.request_id  # type: ignore[attr-defined]
    try:
        if request.method != "GET":
            raise MethodNotAllowed("Use GET.")
        api_key: ApiKey = await authenticate(request)
        data = await sync_to_async(selectors.run_data)(
            org=api_key.organization, request_id=request_id
        )
    except ApplicationError as exc:
        return application_error_response(exc, request_id=rid)
    return JsonResponse(data)
