"""Reading a judge model's answer into scores, and combining several readings into a ranking.

Judges are asked for bare JSON but often wrap it in prose or a Markdown fence, or leave a
trailing comma. :func:`verdict_parse` repairs what it safely can (extracts the outermost JSON
object, drops trailing commas, clamps scores to 0..10) and otherwise raises
:class:`JudgeOutputInvalid` (HTTP 502 ``judge_output_invalid``): a ranking guessed from prose would
be worse than a clear error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from llmwise.errors import ApplicationError

from .prompts import LABELS, Criterion

SCORE_MIN: Final = 0.0
SCORE_MAX: Final = 10.0
RATIONALE_MAX_CHARS: Final = 500
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class JudgeOutputInvalid(ApplicationError):
    status_code: int = 502
    error_type = "upstream_error"
    code = "judge_output_invalid"


@dataclass(frozen=True)
class Reading:
    """One judge call's verdict, in candidate order (not the order shown to the judge)."""

    scores: tuple[dict[str, float], ...]  # per candidate: criterion → 0..10
    rationales: tuple[str, ...]
    positions: tuple[int, ...]  # per candidate: its place in the judge's ranking (0 = best)


def _json_candidates(text: str) -> list[str]:
    """Substrings that may be the verdict object, most likely first."""
    found = [match.group(1) for match in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        found.append(text[start : end + 1])
    found.append(text)
    return found


def _loads(text: str) -> dict[str, Any] | None:
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            value = json.loads(attempt)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or value != value:  # NaN
        return None
    return min(max(float(value), SCORE_MIN), SCORE_MAX)


def verdict_parse(text: str, *, order: Sequence[int], criteria: Sequence[Criterion]) -> Reading:
    """Parse a judge's answer. ``order[i]`` is the candidate shown under label ``LABELS[i]``."""
    shown = len(order)
    data = next((d for d in map(_loads, _json_candidates(text)) if d is not None), None)
    if data is None:
        raise JudgeOutputInvalid("The judge model did not answer with a JSON verdict.")
    entries = data.get("candidates")
    if not isinstance(entries, list):
        raise JudgeOutputInvalid("The judge's verdict has no 'candidates' list.")
    scores: list[dict[str, float] | None] = [None] * shown
    rationales = [""] * shown
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        label = str(entry.get("label", "")).strip().upper()
        if len(label) != 1 or label not in LABELS[:shown]:
            continue
        raw = entry.get("scores")
        if not isinstance(raw, dict):
            continue
        normalized = {str(k).strip().lower(): v for k, v in raw.items()}
        values = {c.name: _score(normalized.get(c.name.lower())) for c in criteria}
        if any(v is None for v in values.values()):
            continue
        index = LABELS.index(label)
        scores[index] = {k: v for k, v in values.items() if v is not None}
        rationale = entry.get("rationale")
        rationales[index] = str(rationale)[:RATIONALE_MAX_CHARS] if rationale else ""
    missing = [LABELS[i] for i, s in enumerate(scores) if s is None]
    if missing:
        raise JudgeOutputInvalid(
            f"The judge's verdict lacks valid scores for candidate(s) {', '.join(missing)}."
        )
    ranking = data.get("ranking")
    positions = _positions(ranking, shown=shown, scores=scores)
    # Back from the shown order to the candidates' own order.
    by_candidate: list[int] = [0] * shown
    for shown_index, candidate in enumerate(order):
        by_candidate[candidate] = shown_index
    return Reading(
        scores=tuple(scores[by_candidate[c]] or {} for c in range(shown)),
        rationales=tuple(rationales[by_candidate[c]] for c in range(shown)),
        positions=tuple(positions[by_candidate[c]] for c in range(shown)),
    )


def _positions(ranking: Any, *, shown: int, scores: Sequence[dict[str, float] | None]) -> list[int]:
    """Each shown label's place in the judge's ranking; from the scores when the ranking is
    missing or not a permutation of the labels."""
    if isinstance(ranking, list):
        labels = [str(label).strip().upper() for label in ranking]
        if sorted(labels) == list(LABELS[:shown]):
            return [labels.index(LABELS[i]) for i in range(shown)]
    overall = [sum(s.values()) / len(s) if s else 0.0 for s in scores]
    ordered = sorted(range(shown), key=lambda i: (-overall[i], i))
    return [ordered.index(i) for i in range(shown)]


def verdict_combine(
    readings: Sequence[Reading], *, criteria: Sequence[Criterion]
) -> list[dict[str, Any]]:
    """Average the readings (one, or two for both orders) per candidate and rank: by mean overall
    score, then by mean place in the judges' rankings, then by candidate order."""
    count = len(readings[0].scores)
    results: list[dict[str, Any]] = []
    for candidate in range(count):
        scores = {
            c.name: round(sum(r.scores[candidate][c.name] for r in readings) / len(readings), 2)
            for c in criteria
        }
        results.append(
            {
                "index": candidate,
                "scores": scores,
                "overall": round(sum(scores.values()) / len(scores), 2),
                "rationale": " / ".join(
                    r.rationales[candidate] for r in readings if r.rationales[candidate]
                ),
                "_place": sum(r.positions[candidate] for r in readings) / len(readings),
            }
        )
    ordered = sorted(results, key=lambda r: (-r["overall"], r["_place"], r["index"]))
    for rank, result in enumerate(ordered, start=1):
        result["rank"] = rank
        del result["_place"]
    return results
