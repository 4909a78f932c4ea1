"""The auto-router's classifier against its labelled evaluation set, plus its behaviour rules.

``tests/data/router_eval.jsonl`` holds prompts written for this project, each labelled with the
category and complexity a person would give it. About 30% are marked ``"split": "heldout"``:
they were written before the heuristics and never looked at while tuning them, so their accuracy
is the honest estimate. The report prints per-category precision/recall and both accuracies;
run with ``-s`` to see it (it is also in the failure message).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.gateway.providers.base import ChatMessage
from apps.gateway.routing.classifier import Category, Classification, Complexity, classify

EVAL_SET = Path(__file__).resolve().parent.parent / "data" / "router_eval.jsonl"
MIN_PROMPTS = 200
MIN_CATEGORY_ACCURACY = 0.85
# Complexity labels are judgement calls; this floor only catches a regression, it is no target.
MIN_COMPLEXITY_ACCURACY = 0.65
ROLES = {"system", "developer", "user", "assistant"}


@dataclass(frozen=True)
class EvalCase:
    messages: tuple[ChatMessage, ...]
    category: str
    complexity: str
    split: str


def load_eval_set() -> list[EvalCase]:
    cases = []
    for line_number, line in enumerate(EVAL_SET.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        messages = tuple(ChatMessage(m["role"], m["content"]) for m in row["messages"])
        assert messages, f"line {line_number}: no messages"
        assert {m.role for m in messages} <= ROLES, f"line {line_number}: unknown role"
        assert messages[-1].role == "user", f"line {line_number}: must end with a user turn"
        cases.append(EvalCase(messages, row["category"], row["complexity"], row["split"]))
    return cases


def accuracy(pairs: list[tuple[str, str]]) -> float:
    return sum(expected == got for expected, got in pairs) / len(pairs) if pairs else 0.0


def eval_report(cases: list[EvalCase], predictions: list[Classification]) -> str:
    """Per-category precision / recall / F1, then category and complexity accuracy overall,
    on the development split and on the held-out split."""
    lines = [
        f"Auto-router evaluation: {len(cases)} prompts ({EVAL_SET.name})",
        f"{'category':<18} {'n':>4} {'precision':>9} {'recall':>7} {'f1':>6}",
    ]
    for category in Category:
        truth = sum(case.category == category for case in cases)
        predicted = sum(p.category == category for p in predictions)
        hits = sum(
            case.category == category and p.category == category
            for case, p in zip(cases, predictions, strict=True)
        )
        precision = hits / predicted if predicted else 0.0
        recall = hits / truth if truth else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(f"{category:<18} {truth:>4} {precision:>9.2f} {recall:>7.2f} {f1:>6.2f}")
    for split in ("all", "dev", "heldout"):
        chosen = [
            (case, p)
            for case, p in zip(cases, predictions, strict=True)
            if split in ("all", case.split)
        ]
        category_accuracy = accuracy([(c.category, p.category) for c, p in chosen])
        complexity_accuracy = accuracy([(c.complexity, p.complexity) for c, p in chosen])
        lines.append(
            f"{split:<8} n={len(chosen):>3}  category accuracy {category_accuracy:6.1%}  "
            f"complexity accuracy {complexity_accuracy:6.1%}"
        )
    misses = [
        f"  {case.split:<7} {case.category} → {p.category}: {case.messages[-1].content[:70]!r}"
        for case, p in zip(cases, predictions, strict=True)
        if case.category != p.category and case.split == "dev"
    ]
    if misses:
        lines.append("dev-split misses (held-out misses are not listed: nobody tunes on them):")
        lines.extend(misses)
    return "\n".join(lines)


def test_eval_set_is_large_varied_and_well_formed() -> None:
    cases = load_eval_set()
    assert len(cases) >= MIN_PROMPTS
    categories = Counter(case.category for case in cases)
    assert set(categories) == {category.value for category in Category}
    assert min(categories.values()) >= 15, categories
    assert {case.complexity for case in cases} == {c.value for c in Complexity}
    heldout = sum(case.split == "heldout" for case in cases) / len(cases)
    assert {case.split for case in cases} == {"dev", "heldout"}
    assert 0.25 <= heldout <= 0.35, heldout
    # Variety the classifier must cope with, not only one-line English requests.
    assert sum(any(m.role == "system" for m in case.messages) for case in cases) >= 10
    assert sum(sum(m.role == "user" for m in case.messages) > 1 for case in cases) >= 8
    assert sum("```" in case.messages[-1].content for case in cases) >= 8
    assert sum(not case.messages[-1].content.isascii() for case in cases) >= 25


def test_category_accuracy_on_the_eval_set() -> None:
    cases = load_eval_set()
    predictions = [classify(case.messages) for case in cases]
    report = eval_report(cases, predictions)
    print("\n" + report)

    overall = accuracy([(c.category, p.category) for c, p in zip(cases, predictions, strict=True)])
    heldout = [(c.category, p.category) for c, p in zip(cases, predictions, strict=True)]
    heldout = [pair for pair, c in zip(heldout, cases, strict=True) if c.split == "heldout"]
    complexity = accuracy(
        [(c.complexity, p.complexity) for c, p in zip(cases, predictions, strict=True)]
    )
    assert overall >= MIN_CATEGORY_ACCURACY, report
    assert accuracy(heldout) >= MIN_CATEGORY_ACCURACY, report
    assert complexity >= MIN_COMPLEXITY_ACCURACY, report


# --- behaviour rules ----------------------------------------------------------------------------
def user(text: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage("user", text),)


def test_pasted_material_does_not_steer_the_instruction() -> None:
    # A text full of the words of other tasks is still something to summarize. (Code *syntax*
    # in a paste does count: that is evidence of a coding task, not a word in passing.)
    paste = (
        "Theorem 3. We prove by induction that the integral converges, she wrote in a poem. "
        "The story was later translated into French; the sentiment was classified as positive. "
    ) * 40
    result = classify(user("Summarize the following notes in three bullet points:\n\n" + paste))
    assert result.category is Category.SUMMARIZATION
    assert "kw:summar" in result.signals


def test_the_system_prompt_defines_a_bare_data_turn() -> None:
    messages = (
        ChatMessage("system", "Classify the customer's message. Answer with exactly one label."),
        ChatMessage("user", "My parcel never arrived and the tracking page is blank."),
    )
    assert classify(messages).category is Category.CLASSIFICATION


def test_a_short_follow_up_leans_on_the_previous_turn() -> None:
    messages = (
        ChatMessage("user", "Write a short poem about the sea in winter"),
        ChatMessage("assistant", "Grey water folds\ninto the cold..."),
        ChatMessage("user", "again, but shorter"),
    )
    result = classify(messages)
    assert result.category is Category.CREATIVE_WRITING
    assert "follow-up" in result.signals


def test_code_fence_script_and_format_signals() -> None:
    code = classify(user("Why does this fail?\n```python\nprint(1/0)\n```"))
    assert code.category is Category.CODE
    assert "code:fence" in code.signals

    chinese = classify(user("请把这句话翻译成英文 明天见"))
    assert chinese.category is Category.TRANSLATION
    assert "script:cjk" in chinese.signals

    extraction = classify(user("Extract the names and dates from this memo and return JSON."))
    assert extraction.category is Category.EXTRACTION
    assert "format:json" in extraction.signals


def test_multi_step_requests_are_recognised_and_hard() -> None:
    result = classify(
        user(
            "Assess our current hosting costs, compare three cloud providers, recommend one, "
            "draft a migration timeline and list the risks with mitigations."
        )
    )
    assert result.category is Category.COMPLEX_MULTISTEP
    assert result.complexity is Complexity.HIGH


@pytest.mark.parametrize(
    ("messages", "category"),
    [
        ((), Category.CHITCHAT),
        (user(""), Category.CHITCHAT),
        (user("zzzz qqqq"), Category.CHITCHAT),
        (user("zzzz qqqq?"), Category.QA),
        ((ChatMessage("assistant", "Hello!"),), Category.CHITCHAT),
    ],
)
def test_nothing_to_go_on_falls_back_with_low_confidence(
    messages: tuple[ChatMessage, ...], category: Category
) -> None:
    result = classify(messages)
    assert result.category is category
    assert result.confidence <= 0.3
    assert "fallback" in result.signals


def test_huge_messages_are_classified_from_their_ends_only() -> None:
    middle = "lorem ipsum dolor sit amet " * 40_000  # ~1 MB: only the capped ends are read
    result = classify(user("Translate into German:\n" + middle + "\nKeep it formal."))
    assert result.category is Category.TRANSLATION
    assert 0.0 <= result.confidence <= 1.0
    assert len(result.signals) <= 8
