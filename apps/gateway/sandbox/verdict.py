"""A judge's JSON verdict from the sandbox, so Judge and best-of Blend work in sandbox mode.

A real model asked to compare labelled candidate answers and "answer with ONLY a JSON object"
in a given shape does so; the sandbox's echo would not, and the playground's Judge tab would fail
in the embedded default. So a request that looks like a judge's — at least two
``<candidate label="X">`` blocks and a JSON shape with ``"scores"`` and ``"ranking"`` — gets a
verdict in that shape: every criterion named in the shape's ``"scores"`` object scored 5-9 from a
hash of the candidate's text (deterministic, so tests can predict it), ranked by total score.

This reads only the request's text, like any model would; it knows nothing of the code that
wrote the prompt. A ``[[sandbox:reply:...]]`` marker still wins (scripted verdicts for tests).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

CANDIDATE = re.compile(r'<candidate label="([A-Z])">\n?(.*?)\n?</candidate>', re.DOTALL)
SCORES_SHAPE = re.compile(r'"scores"\s*:\s*\{([^{}]*)\}')
SCORE_NAME = re.compile(r'"([^"]+)"\s*:')
MIN_CANDIDATES = 2
LOWEST_SCORE = 5
SCORE_SPREAD = 5  # scores run from LOWEST_SCORE to LOWEST_SCORE + SCORE_SPREAD - 1


def _score(criterion: str, text: str) -> int:
    digest = hashlib.sha256(f"{criterion}\n{text}".encode()).digest()
    return LOWEST_SCORE + digest[0] % SCORE_SPREAD


def judge_reply(texts: Sequence[tuple[str, str]]) -> str | None:
    """The verdict for a judge-shaped request (``(role, text)`` messages), else None."""
    everything = "\n".join(text for _, text in texts)
    if "JSON" not in everything or '"ranking"' not in everything:
        return None
    shape = SCORES_SHAPE.search(everything)
    if shape is None:
        return None
    criteria = SCORE_NAME.findall(shape.group(1))
    candidates: dict[str, str] = {}
    for _, text in texts:
        for label, body in CANDIDATE.findall(text):
            candidates.setdefault(label, body)
    if not criteria or len(candidates) < MIN_CANDIDATES:
        return None
    scores = {
        label: {name: _score(name, body) for name in criteria}
        for label, body in sorted(candidates.items())
    }
    totals = {label: sum(points.values()) for label, points in scores.items()}
    entries = [
        {
            "label": label,
            "scores": points,
            "rationale": f"Sandbox verdict: {totals[label]} points in total, "
            "scored from a hash of the answer's text.",
        }
        for label, points in scores.items()
    ]
    ranking = sorted(scores, key=lambda label: (-totals[label], label))
    return json.dumps({"candidates": entries, "ranking": ranking})
