"""The prompts Blend and Judge send to their synthesizer and judge models (docs/orchestration.md).

Both show the conversation and the candidate answers, each fenced in ``<candidate>`` tags with a
letter label, so a model can tell where one answer ends even when an answer contains Markdown.
Candidates are truncated to a fixed character budget: that bounds the prompt, so the fan-out's
single reservation (made before any candidate exists) always covers the synthesis or judge call.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from apps.gateway.providers.base import ChatMessage

LABELS: Final = string.ascii_uppercase
TRUNCATION_NOTE: Final = "\n[... truncated]"


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str


DEFAULT_CRITERIA: Final = (
    Criterion("accuracy", "Factually correct, no invented details; answers what was asked."),
    Criterion("helpfulness", "Useful to the person asking: complete, specific, actionable."),
    Criterion("clarity", "Well organized and easy to follow; no padding."),
)

SYNTHESIZE_SYSTEM: Final = """\
You merge several AI assistants' answers to the same conversation into one better answer.

Rules:
- Read every candidate answer. Keep what is correct and useful, drop what is wrong, redundant or
  unsupported; when candidates disagree, prefer the answer that is best supported and say so only
  if the disagreement matters to the reader.
- Write a single, self-contained answer addressed to the user, in the conversation's language.
- Do not mention the candidates, the other assistants or this process.
- Be as concise as the best candidate; never longer than needed."""

JUDGE_SYSTEM: Final = """\
You are an impartial judge comparing AI assistants' answers to the same conversation.

Score every candidate from 0 (worst) to 10 (best) on each criterion below, independently of
the order the candidates are shown in and of their length. Then rank them, best first.

Criteria:
{criteria}

Answer with ONLY a JSON object, no prose and no code fence, exactly in this shape:
{{"candidates": [{{"label": "A", "scores": {{{score_shape}}},
                 "rationale": "one or two sentences"}}],
 "ranking": ["A", "B"]}}
Include every candidate label once in "candidates" and once in "ranking"."""


def candidate_text(text: str, *, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters (with a note when cut)."""
    if len(text) <= max_chars:
        return text
    return text[: max(max_chars - len(TRUNCATION_NOTE), 0)] + TRUNCATION_NOTE


def _conversation(messages: Sequence[ChatMessage]) -> str:
    return "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)


def _candidates(texts: Sequence[str], *, max_chars: int) -> str:
    return "\n\n".join(
        f'<candidate label="{LABELS[i]}">\n'
        f"{candidate_text(text, max_chars=max_chars)}\n</candidate>"
        for i, text in enumerate(texts)
    )


def synthesize_messages(
    *, conversation: Sequence[ChatMessage], candidates: Sequence[str], max_chars: int
) -> tuple[ChatMessage, ...]:
    """The synthesizer's prompt: instructions, then the conversation and the candidates."""
    user = (
        f"The conversation so far:\n\n{_conversation(conversation)}\n\n"
        f"Candidate answers to its last message:\n\n{_candidates(candidates, max_chars=max_chars)}"
        "\n\nWrite the single best answer."
    )
    return (ChatMessage("system", SYNTHESIZE_SYSTEM), ChatMessage("user", user))


def judge_messages(
    *,
    conversation: Sequence[ChatMessage],
    candidates: Sequence[str],
    criteria: Sequence[Criterion],
    max_chars: int,
) -> tuple[ChatMessage, ...]:
    """The judge's prompt: criteria and the JSON shape, then the conversation and candidates."""
    system = JUDGE_SYSTEM.format(
        criteria="\n".join(f"- {c.name}: {c.description}" for c in criteria),
        score_shape=", ".join(f"{json.dumps(c.name)}: 0" for c in criteria),
    )
    user = (
        f"The conversation:\n\n{_conversation(conversation)}\n\n"
        f"Candidate answers to its last message:\n\n{_candidates(candidates, max_chars=max_chars)}"
        "\n\nJudge them now. JSON only."
    )
    return (ChatMessage("system", system), ChatMessage("user", user))
