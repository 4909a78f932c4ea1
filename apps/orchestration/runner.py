"""Compare, Blend and Judge runs on top of the gateway's call service.

A run is planned and paid for before anything is sent: every model is resolved, the worst case
of every call it may make (candidates, then the synthesizer or the judge) is summed through
:func:`calls.hold_estimate`, and that sum is held once (402 when short) together with the parent
row. Each child call then carves its own hold out of that one reservation (``parent_hold``) and is
settled on its own by the call service, however it ends. When the run ends — done, failed,
timed out, or the client gone — outstanding calls are cancelled (each settles what it streamed)
and what the fan-out hold still has is released.

:meth:`Run.events` is the single code path: an async stream of ``(event, data)`` pairs that SSE
and the WebSocket forward as they come and the JSON endpoints fold into one body (the ``done``
event carries the whole result). The vocabulary is in ``docs/orchestration.md``.

Candidate calls always stream upstream (whatever the client asked), so every answer reports its
time to first token; their request-log rows say ``stream: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.accounts.models import ApiKey
from apps.gateway import calls
from apps.gateway.counters import counters
from apps.gateway.limits import COUNTER_ERRORS
from apps.gateway.native_api import cost_payload, error_payload, usage_payload
from apps.gateway.providers.base import Usage
from apps.wallet.models import Reservation
from llmwise.errors import ApplicationError

from . import prompts, services
from .models import OrchestrationRun
from .prompts import Criterion
from .verdicts import verdict_combine, verdict_parse

# Candidates are shown to the synthesizer/judge cut to this many characters per output token
# they were allowed: generous for real tokenizers (about 4), and it bounds the prompt we hold for.
CANDIDATE_CHARS_PER_TOKEN: Final = 6
PLACEHOLDER_CHAR: Final = "x"
SLOT_KEY: Final = "orch:active:{org_id}"
SLOT_TTL_MARGIN_SECONDS: Final = 60.0
MS: Final = 1000

logger = logging.getLogger(__name__)


class OrchestrationTimeout(ApplicationError):
    status_code: int = 504
    error_type = "upstream_error"
    code = "orchestration_timeout"


class AllModelsFailed(ApplicationError):
    status_code: int = 502
    error_type = "upstream_error"
    code = "all_models_failed"


class CallCrashed(ApplicationError):
    """A child call ended by a failure of ours, not the provider's (details in the log)."""

    status_code: int = 500
    error_type = "api_error"
    code = "internal_error"


class TooManyRuns(ApplicationError):
    status_code: int = 429
    error_type = "rate_limit_error"
    code = "orchestration_concurrency"
    retry_after = 1


@dataclass(frozen=True)
class SuppliedCandidate:
    content: str
    model: str | None = None


@dataclass(frozen=True)
class JudgeOptions:
    model: str
    criteria: tuple[Criterion, ...]
    both_orders: bool = False
    shuffle: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class RunSpec:
    """A validated request. ``chat`` carries the conversation and generation parameters; its
    ``model`` is replaced per call."""

    mode: str  # OrchestrationRun.Mode
    chat: calls.ChatInput
    models: tuple[str, ...] = ()
    supplied: tuple[SuppliedCandidate, ...] = ()
    judge: JudgeOptions | None = None
    strategy: str = "synthesize"  # blend: "synthesize" | "best-of"
    synthesizer: str | None = None
    include_candidates: bool = True


@dataclass
class ChildResult:
    """One child call as it ended."""

    index: int
    model: str
    request_id: str
    text: str = ""
    finish_reason: str = ""
    usage: Usage | None = None
    cost_micros: int = 0
    byok: bool = False
    latency_ms: int = 0
    ttft_ms: int | None = None
    error: ApplicationError | None = None

    def payload(self) -> dict[str, Any]:
        usage = self.usage or Usage(0, 0)
        return {
            "index": self.index,
            "model": self.model,
            "request_id": self.request_id,
            "content": self.text,
            "finish_reason": self.finish_reason or None,
            "usage": usage_payload(usage),
            "cost": cost_payload(self.cost_micros, charged=not self.byok),
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "error": error_payload(self.error, request_id=self.request_id)["error"]
            if self.error is not None
            else None,
        }


@dataclass(frozen=True)
class _Job:
    index: int
    request_id: str
    chat: calls.ChatInput
    delta_event: str | None  # the event each text chunk is forwarded as; None: not forwarded


def _elapsed_ms(since: float) -> int:
    return int((time.perf_counter() - since) * MS)


# --- planning -----------------------------------------------------------------------------------
async def _max_tokens(api_key: ApiKey, chat: calls.ChatInput, model_id: str, param: str) -> int:
    model = await calls.resolve_model(api_key=api_key, model_id=model_id, param=param)
    return chat.max_tokens if chat.max_tokens is not None else model.default_max_tokens


def _placeholders(count: int, max_chars: int) -> list[str]:
    return [PLACEHOLDER_CHAR * max_chars] * count


def _judge_chat(
    spec: RunSpec, judge: JudgeOptions, texts: Sequence[str], max_chars: int
) -> calls.ChatInput:
    return calls.ChatInput(
        model=judge.model,
        messages=prompts.judge_messages(
            conversation=spec.chat.messages,
            candidates=texts,
            criteria=judge.criteria,
            max_chars=max_chars,
        ),
        max_tokens=settings.ORCHESTRATION_JUDGE_MAX_TOKENS,
        temperature=0.0,
        stream=True,
        user=spec.chat.user,
    )


def _synth_chat(spec: RunSpec, model: str, texts: Sequence[str], max_chars: int) -> calls.ChatInput:
    return dataclasses.replace(
        spec.chat,
        model=model,
        messages=prompts.synthesize_messages(
            conversation=spec.chat.messages, candidates=texts, max_chars=max_chars
        ),
        stream=True,
        fallbacks=(),
        mesh=False,
    )


async def _slot_take(api_key: ApiKey) -> bool:
    """One of the organization's concurrent-run slots (TooManyRuns when none is free). Fails open
    when the shared counters are unreachable: the wallet hold still bounds the spend."""
    key = SLOT_KEY.format(org_id=api_key.organization_id)
    ttl = settings.ORCHESTRATION_TIMEOUT_SECONDS + SLOT_TTL_MARGIN_SECONDS
    cap: int = settings.ORCHESTRATION_MAX_CONCURRENT_PER_ORG
    try:
        done, _ = await counters().value_add(key, 1, ttl_seconds=ttl, limit=cap)
    except COUNTER_ERRORS:
        return False
    if not done:
        raise TooManyRuns(
            f"At most {cap} Compare/Blend/Judge runs may be in flight at once per organization."
        )
    return True


async def _slot_release(api_key: ApiKey) -> None:
    key = SLOT_KEY.format(org_id=api_key.organization_id)
    with contextlib.suppress(*COUNTER_ERRORS):
        await counters().value_add(key, -1, ttl_seconds=None, floor=0, only_if_present=True)


async def run_start(
    *, api_key: ApiKey, spec: RunSpec, request_id: str, endpoint: str, stream: bool
) -> Run:
    """Validate, plan, and hold the run's whole worst case; nothing is sent upstream yet.

    Raises before any call: unknown or forbidden models (404/403), ``max_tokens`` too large,
    no credit for the whole fan-out (402), too many runs in flight (429).
    """
    chat = dataclasses.replace(spec.chat, stream=True)
    spec = dataclasses.replace(spec, chat=chat)
    holds = 0
    max_tokens = 0
    for index, model_id in enumerate(spec.models):
        max_tokens = max(
            max_tokens, await _max_tokens(api_key, chat, model_id, param=f"models.{index}")
        )
        holds += await calls.hold_estimate(
            api_key=api_key, chat=dataclasses.replace(chat, model=model_id)
        )
    if spec.supplied:
        max_chars = max(len(c.content) for c in spec.supplied)
    else:
        max_chars = min(
            max_tokens * CANDIDATE_CHARS_PER_TOKEN, settings.ORCHESTRATION_CANDIDATE_MAX_CHARS
        )
    count = len(spec.supplied) or len(spec.models)
    if spec.judge is not None:
        await calls.resolve_model(api_key=api_key, model_id=spec.judge.model, param="judge_model")
        judge_chat = _judge_chat(spec, spec.judge, _placeholders(count, max_chars), max_chars)
        readings = 2 if spec.judge.both_orders else 1
        holds += readings * await calls.hold_estimate(api_key=api_key, chat=judge_chat)
    if spec.synthesizer is not None:
        await calls.resolve_model(api_key=api_key, model_id=spec.synthesizer, param="synthesizer")
        synth_chat = _synth_chat(spec, spec.synthesizer, _placeholders(count, max_chars), max_chars)
        holds += await calls.hold_estimate(api_key=api_key, chat=synth_chat)
    slot = await _slot_take(api_key)
    try:
        record, hold = await sync_to_async(services.run_open)(
            api_key=api_key,
            request_id=request_id,
            mode=spec.mode,
            endpoint=endpoint,
            model_ids=list(spec.models),
            options=_options(spec),
            stream=stream,
            hold_micros=holds,
            timeout_seconds=settings.ORCHESTRATION_TIMEOUT_SECONDS,
        )
    except BaseException:
        if slot:
            await asyncio.shield(_slot_release(api_key))
        raise
    return Run(
        api_key=api_key,
        spec=spec,
        request_id=request_id,
        endpoint=endpoint,
        record=record,
        hold=hold,
        max_chars=max_chars,
        slot=slot,
    )


def _options(spec: RunSpec) -> dict[str, Any]:
    """What the parent row keeps of the request: choices, never texts."""
    options: dict[str, Any] = {"max_tokens": spec.chat.max_tokens}
    if spec.mode == OrchestrationRun.Mode.BLEND:
        options["strategy"] = spec.strategy
    if spec.synthesizer:
        options["synthesizer"] = spec.synthesizer
    if spec.judge is not None:
        options["judge_model"] = spec.judge.model
        options["criteria"] = [c.name for c in spec.judge.criteria]
        options["both_orders"] = spec.judge.both_orders
    if spec.supplied:
        options["supplied_candidates"] = len(spec.supplied)
    return options


# --- running ------------------------------------------------------------------------------------
@dataclass
class Run:
    api_key: ApiKey
    spec: RunSpec
    request_id: str
    endpoint: str
    record: OrchestrationRun
    hold: Reservation | None
    max_chars: int
    slot: bool
    children: list[ChildResult] = field(default_factory=list)
    error: ApplicationError | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _started: float = field(default_factory=time.perf_counter)
    _deadline: float = 0.0
    _closing: asyncio.Future[None] | None = None

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The run, as it happens. Ends with exactly one ``done`` or ``error`` event, sent once
        the run is closed (its record final, its hold settled), so a client that reads the run
        the moment it sees the end finds it finished; a consumer that stops early has the
        outstanding calls cancelled and settled instead."""
        self._deadline = asyncio.get_running_loop().time() + settings.ORCHESTRATION_TIMEOUT_SECONDS
        status = OrchestrationRun.Status.CANCELLED
        try:
            yield "run", self._run_payload()
            try:
                body: dict[str, Any] = {}
                async for event in self._steps(body):
                    yield event
            except ApplicationError as exc:
                self.error = exc
                status = OrchestrationRun.Status.ERROR
                error = {**error_payload(exc, request_id=self.request_id), "totals": self._totals()}
                await self._close_once(status)
                yield "error", error
                return
            failed = any(child.error is not None for child in self.children)
            status = OrchestrationRun.Status.PARTIAL if failed else OrchestrationRun.Status.OK
            body["totals"] = self._totals()
            await self._close_once(status)
            yield "done", body
        finally:
            await self._close_once(status)

    async def _close_once(self, status: str) -> None:
        """:meth:`_close`, once, finished even if the caller is cancelled meanwhile."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(status))
        await asyncio.shield(self._closing)

    async def _steps(self, body: dict[str, Any]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        spec = self.spec
        body.update(
            {"id": self.request_id, "object": f"orchestration.{spec.mode}", "mode": spec.mode}
        )
        candidates: list[ChildResult] = []
        if spec.models:
            jobs = [
                _Job(
                    index=index,
                    request_id=f"{self.request_id}.{index}",
                    chat=dataclasses.replace(spec.chat, model=model_id),
                    delta_event="delta",
                )
                for index, model_id in enumerate(spec.models)
            ]
            async for item in self._fan_out(jobs):
                if isinstance(item, ChildResult):
                    candidates.append(item)
                    yield "model_done", item.payload()
                else:
                    yield item
            candidates.sort(key=lambda c: c.index)
            answered = [c for c in candidates if c.error is None and c.text]
            if not answered:
                summary = "; ".join(
                    f"{c.model}: {c.error.code if c.error else 'empty answer'}" for c in candidates
                )
                raise AllModelsFailed(f"Every model failed ({summary}).")
            texts = [c.text for c in answered]
            indexes = [c.index for c in answered]
        else:
            texts = [c.content for c in spec.supplied]
            indexes = list(range(len(texts)))

        if spec.mode == OrchestrationRun.Mode.COMPARE:
            body["results"] = [c.payload() for c in candidates]
            return
        if spec.mode == OrchestrationRun.Mode.JUDGE:
            ranking, judged = await self._judge(texts, indexes)
            body["candidates"] = (
                [c.payload() for c in candidates]
                if candidates
                else [
                    {"index": i, "model": c.model, "content": c.content}
                    for i, c in enumerate(spec.supplied)
                ]
            )
            body["ranking"] = ranking
            body["winner"] = ranking[0]["index"] if ranking else None
            body["judge"] = judged
            yield "verdict", {"ranking": ranking, "winner": body["winner"], "judge": judged}
            return
        # Blend.
        if spec.include_candidates:
            body["candidates"] = [c.payload() for c in candidates]
        if spec.strategy == "best-of":
            ranking, judged = await self._judge(texts, indexes)
            best = next(c for c in candidates if c.index == ranking[0]["index"])
            body["ranking"], body["judge"] = ranking, judged
            body["answer"] = {**best.payload(), "source": "best-of"}
            yield "verdict", {"ranking": ranking, "winner": best.index, "judge": judged}
            return
        assert spec.synthesizer is not None  # noqa: S101 - the parser sets it for synthesize
        job = _Job(
            index=len(spec.models),
            request_id=f"{self.request_id}.synth",
            chat=_synth_chat(spec, spec.synthesizer, texts, self.max_chars),
            delta_event="synthesis_delta",
        )
        synthesis: ChildResult | None = None
        async for item in self._fan_out([job]):
            if isinstance(item, ChildResult):
                synthesis = item
            else:
                yield item
        assert synthesis is not None  # noqa: S101 - every job reports a result
        if synthesis.error is not None:
            raise synthesis.error
        body["answer"] = {**synthesis.payload(), "source": "synthesis"}
        yield "synthesis_done", body["answer"]

    async def _judge(
        self, texts: list[str], indexes: list[int]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Judge ``texts`` (candidates ``indexes``): one reading in a shuffled order, or two in
        opposite orders (``both_orders``), averaged."""
        judge = self.spec.judge
        assert judge is not None  # noqa: S101 - the parser sets it for judge and best-of
        order = list(range(len(texts)))
        if judge.shuffle:
            # Not for security: only the order the judge sees, to spread its position bias.
            random.Random(judge.seed).shuffle(order)  # noqa: S311
        orders = [order, order[::-1]] if judge.both_orders else [order]
        jobs = [
            _Job(
                index=1000 + k,
                request_id=f"{self.request_id}.judge{k}",
                chat=_judge_chat(self.spec, judge, [texts[i] for i in shown], self.max_chars),
                delta_event=None,
            )
            for k, shown in enumerate(orders)
        ]
        results = sorted(
            [item async for item in self._fan_out(jobs) if isinstance(item, ChildResult)],
            key=lambda r: r.index,
        )
        for result in results:
            if result.error is not None:
                raise result.error
        readings = [
            verdict_parse(result.text, order=shown, criteria=judge.criteria)
            for result, shown in zip(results, orders, strict=True)
        ]
        ranking = verdict_combine(readings, criteria=judge.criteria)
        models = self._candidate_models()
        for entry in ranking:
            entry["index"] = indexes[entry["index"]]
            entry["model"] = models.get(entry["index"])
        ranking.sort(key=lambda entry: entry["rank"])
        judged = {
            "model": judge.model,
            "criteria": [dataclasses.asdict(c) for c in judge.criteria],
            "both_orders": judge.both_orders,
            "orders_shown": [[indexes[i] for i in shown] for shown in orders],
            "request_ids": [r.request_id for r in results],
        }
        return ranking, judged

    def _candidate_models(self) -> dict[int, str | None]:
        if self.spec.models:
            return dict(enumerate(self.spec.models))
        return {i: c.model for i, c in enumerate(self.spec.supplied)}

    async def _fan_out(
        self, jobs: Sequence[_Job]
    ) -> AsyncIterator[tuple[str, dict[str, Any]] | ChildResult]:
        """Run ``jobs`` concurrently; yield their deltas as they arrive, and each one's result."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | ChildResult] = asyncio.Queue()
        for job in jobs:
            task = asyncio.create_task(self._child(job, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        remaining = len(jobs)
        while remaining:
            item = await queue.get()
            if isinstance(item, ChildResult):
                remaining -= 1
                self.children.append(item)
            yield item

    async def _child(
        self, job: _Job, queue: asyncio.Queue[tuple[str, dict[str, Any]] | ChildResult]
    ) -> None:
        started = time.perf_counter()
        result = ChildResult(index=job.index, model=job.chat.model, request_id=job.request_id)
        texts: list[str] = []
        stream: calls.ChatStream | None = None
        try:
            # The run's deadline, per call: a call still running then is cancelled (and settles
            # what it streamed) and reports a timeout, so the run always ends in time.
            async with asyncio.timeout_at(self._deadline):
                stream = await calls.chat_stream(
                    api_key=self.api_key,
                    chat=job.chat,
                    request_id=job.request_id,
                    endpoint=self.endpoint,
                    parent_hold=self.hold,
                    parent_request_id=self.request_id,
                )
                events = cast(AsyncGenerator[Any, None], stream.events)
                try:
                    async for event in events:
                        if event.text:
                            if result.ttft_ms is None:
                                result.ttft_ms = _elapsed_ms(started)
                            texts.append(event.text)
                            if job.delta_event is not None:
                                queue.put_nowait(
                                    (
                                        job.delta_event,
                                        {
                                            "index": job.index,
                                            "model": job.chat.model,
                                            "text": event.text,
                                        },
                                    )
                                )
                        if event.finish_reason is not None:
                            result.finish_reason = event.finish_reason
                finally:
                    await events.aclose()
        except TimeoutError:
            result.error = OrchestrationTimeout(
                f"{job.chat.model} did not finish within the run's "
                f"{settings.ORCHESTRATION_TIMEOUT_SECONDS:g} s."
            )
        except ApplicationError as exc:
            result.error = exc
        except Exception as exc:
            # Reported as this call's failure: the run goes on, and its fan-out must not wait
            # forever for a result that would never come.
            logger.exception("Orchestration call %s failed", job.request_id)
            result.error = CallCrashed(
                f"{job.chat.model} failed inside LLMWise ({type(exc).__name__})."
            )
        finally:
            result.text = "".join(texts)
            result.latency_ms = _elapsed_ms(started)
            if stream is not None:
                result.model = stream.model.id  # the member of a failover chain that answered
                result.byok = stream.byok
                result.usage = stream.outcome.get("usage")
                result.cost_micros = stream.outcome.get("cost_micros", 0)
            queue.put_nowait(result)

    def _run_payload(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "mode": self.spec.mode,
            "models": list(self.spec.models),
            "reserved": cost_payload(self.record.reserved_micros, charged=False),
        }

    def _totals(self) -> dict[str, Any]:
        usages = [c.usage for c in self.children if c.usage is not None]
        charged = sum(c.cost_micros for c in self.children if not c.byok)
        return {
            "calls": len(self.children),
            "failed_calls": sum(1 for c in self.children if c.error is not None),
            "usage": usage_payload(
                Usage(
                    prompt_tokens=sum(u.prompt_tokens for u in usages),
                    completion_tokens=sum(u.completion_tokens for u in usages),
                    cached_tokens=sum(u.cached_tokens for u in usages),
                    reasoning_tokens=sum(u.reasoning_tokens for u in usages),
                    estimated=any(u.estimated for u in usages),
                )
            ),
            "cost": cost_payload(sum(c.cost_micros for c in self.children), charged=True),
            "charged_micros": charged,
            "latency_ms": _elapsed_ms(self._started),
        }

    async def _close(self, status: str) -> None:
        """Cancel what still runs (each call settles what it streamed), then close the run."""
        running = list(self._tasks)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        totals = self._totals()
        try:
            await sync_to_async(services.run_close)(
                run=self.record,
                hold=self.hold,
                totals=services.RunTotals(
                    status=status,
                    error_code=self.error.code if self.error is not None else "",
                    cost_micros=totals["cost"]["micros"],
                    prompt_tokens=totals["usage"]["prompt_tokens"],
                    completion_tokens=totals["usage"]["completion_tokens"],
                    calls=totals["calls"],
                    failed_calls=totals["failed_calls"],
                    latency_ms=totals["latency_ms"],
                ),
            )
        finally:
            if self.slot:
                await _slot_release(self.api_key)

    async def collect(self) -> dict[str, Any]:
        """Run to the end and return the ``done`` body (raises the run's error instead)."""
        events = cast(AsyncGenerator[tuple[str, dict[str, Any]], None], self.events())
        try:
            async for name, data in events:
                if name == "done":
                    return data
        finally:
            await events.aclose()
        assert self.error is not None  # noqa: S101 - events end with done or error
        raise self.error
