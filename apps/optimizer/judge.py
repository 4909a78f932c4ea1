"""The replay lab's judge: one pairwise comparison, original answer against candidate answer.

A small prompt of our own (the orchestration app's judge scores N candidates on criteria for its
fan-out; the lab needs one blind A/B verdict per replayed request). The answers are shown as A
and B in an order the caller randomizes, so a judge's position bias cannot favour either side.

Judges are asked for bare JSON but answer in every shape: fenced, wrapped in prose, with other
keys, or a bare word. :func:`verdict_read` accepts what is unambiguous and returns ``None``
otherwise — an unreadable verdict counts as *unjudged*, never as a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

from apps.gateway.providers.base import ChatMessage

Winner = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "loss", "unjudged"]
TRUNCATION_NOTE: Final = "\n[... truncated]"

JUDGE_SYSTEM: Final = """\
You are an impartial judge. Two AI assistants answered the same conversation. Decide which \
answer better serves the user: correct, complete, following the instructions and the requested \
format. Ignore the order the answers are shown in and their length. If they are equally good, \
or equally bad, say tie.

Answer with ONLY a JSON object, no prose and no code fence:
{"winner": "A" | "B" | "tie", "reason": "one short sentence"}"""

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_WINNER_FIELD = re.compile(
    r"""["']?(?:winner|verdict|better|choice|preferred)["']?\s*[:=]\s*["']?"""
    r"(?:answer\s+|assistant\s+|response\s+)?(A|B|tie|draw|equal|both|neither)\b",
    re.IGNORECASE,
)
_KEYS: Final = ("winner", "verdict", "better", "choice", "preferred", "result")
_TIE_WORDS: Final = {"tie", "draw", "equal", "both", "same", "neither", "none", "equally good"}


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[: max(max_chars - len(TRUNCATION_NOTE), 0)] + TRUNCATION_NOTE


def _content(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def conversation_text(messages: Sequence[dict[str, Any]], *, max_chars: int) -> str:
    """A stored prompt (the request log's ``[{"role", "content"}]``) as plain text."""
    text = "\n\n".join(
        f"[{m.get('role', 'user')}]\n{_content(m.get('content', ''))}" for m in messages
    )
    return _clip(text, max_chars)


def judge_messages(
    *, conversation: str, answer_a: str, answer_b: str, max_chars: int
) -> tuple[ChatMessage, ...]:
    """The judge's prompt: instructions, then the conversation and the two answers."""
    user = (
        f"The conversation:\n\n{conversation}\n\n"
        f'<answer label="A">\n{_clip(answer_a, max_chars)}\n</answer>\n\n'
        f'<answer label="B">\n{_clip(answer_b, max_chars)}\n</answer>\n\n'
        "Which answer is better? JSON only."
    )
    return (ChatMessage("system", JUDGE_SYSTEM), ChatMessage("user", user))


def _normalize(value: Any) -> Winner | None:
    if not isinstance(value, str):
        return None
    word = value.strip().strip(".!\"'").lower()
    for prefix in ("answer ", "assistant ", "response ", "option "):
        word = word.removeprefix(prefix)
    if word == "a":
        return "A"
    if word == "b":
        return "B"
    if word in _TIE_WORDS:
        return "tie"
    return None


def _objects(text: str) -> list[str]:
    found = [match.group(1) for match in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        found.append(text[start : end + 1])
    return found


def verdict_read(text: str) -> Winner | None:
    """The winner a judge's answer names (``"A"``, ``"B"`` or ``"tie"``), or None if unclear."""
    for candidate in _objects(text):
        for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                value = json.loads(attempt)
            except ValueError:
                continue
            if isinstance(value, dict):
                for key in _KEYS:
                    winner = _normalize(value.get(key))
                    if winner is not None:
                        return winner
    match = _WINNER_FIELD.search(text)
    if match is not None:
        winner = _normalize(match.group(1))
        if winner is not None:
            return winner
    return _normalize(text)  # a bare "A", "B" or "tie"


def outcome_for_candidate(winner: Winner | None, *, candidate_label: str) -> Outcome:
    """The candidate's result given the judge's winner and the label the candidate was shown as."""
    if winner is None:
        return "unjudged"
    if winner == "tie":
        return "tie"
    return "win" if winner == candidate_label else "loss"
