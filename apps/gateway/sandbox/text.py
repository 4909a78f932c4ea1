"""Deterministic answers and token counts, so tests can assert exact numbers.

Tokens are counted as ceil(characters / 4) per text plus a small per-message overhead, roughly
what real tokenizers give for English. Caching and reasoning imitate the real providers' rules
closely enough to exercise every usage field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from .faults import PROMPT_MARKER
from .verdict import judge_reply

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 3
ECHO_WORDS = 12
WORDS_PER_CHUNK = 3
# Prompt caching as OpenAI does it: prompts of 1,024+ tokens get their prefix (everything before
# the last message) cached in 128-token blocks.
CACHE_MIN_PROMPT_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
# Reasoning models think a fixed amount per answer in the sandbox.
REASONING_TOKENS = 64
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)|reasoner|gemini-2\.5|grok-4|thinking")
DEFAULT_MAX_TOKENS = 4096
# ``[[sandbox:reply:<base64url of UTF-8 text>]]`` anywhere in the prompt: answer exactly that text
# (e.g. a judge's JSON verdict, or prose that is not JSON) instead of the echo. Generic test
# infrastructure for callers whose output format matters (orchestration's judge).
REPLY_MARKER = re.compile(r"\[\[sandbox:reply:([A-Za-z0-9_=-]+)\]\]")


def count_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the sandbox needs from any wire format's request."""

    model: str
    texts: list[tuple[str, str]]  # (role, text) including the system prompt, in order
    max_tokens: int | None
    stream: bool
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    truncated: bool  # max_tokens cut it: finish reason "length"
    prompt_tokens: int
    completion_tokens: int  # visible text only
    cached_tokens: int
    reasoning_tokens: int


def scripted_reply(prompt: Prompt) -> str | None:
    """The text a reply marker asks for (the last message carrying one wins), else None."""
    for _, text in reversed(prompt.texts):
        match = REPLY_MARKER.search(text)
        if match is None:
            continue
        try:
            return base64.urlsafe_b64decode(match.group(1).encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
    return None


def answer_text(*, model: str, prompt: Prompt) -> str:
    scripted = scripted_reply(prompt)
    if scripted is not None:
        return scripted
    verdict = judge_reply(prompt.texts)  # a judge's request: answer as a model would, in JSON
    if verdict is not None:
        return verdict
    last_user = next((text for role, text in reversed(prompt.texts) if role == "user"), "")
    echo = " ".join(PROMPT_MARKER.sub("", last_user).split()[:ECHO_WORDS])
    return (
        f'Sandbox answer from {model}: you said "{echo}". '
        "This reply is deterministic, so tests can assert on every word of it."
    )


def compose(*, prompt: Prompt, model: str | None = None) -> Answer:
    model = model or prompt.model
    full = answer_text(model=model, prompt=prompt)
    limit = prompt.max_tokens if prompt.max_tokens is not None else DEFAULT_MAX_TOKENS
    text = full[: max(limit, 0) * CHARS_PER_TOKEN]
    per_message = [count_tokens(text) + MESSAGE_OVERHEAD_TOKENS for _, text in prompt.texts]
    prompt_tokens = sum(per_message)
    cached = 0
    if prompt_tokens >= CACHE_MIN_PROMPT_TOKENS and per_message:
        prefix = prompt_tokens - per_message[-1]
        cached = prefix // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS
    return Answer(
        text=text,
        truncated=len(text) < len(full),
        prompt_tokens=prompt_tokens,
        completion_tokens=count_tokens(text),
        cached_tokens=cached,
        reasoning_tokens=REASONING_TOKENS if REASONING_MODEL.search(model) else 0,
    )


def chunks(text: str) -> list[str]:
    """The answer in stream-sized pieces (a few words each) that concatenate back to it."""
    words = re.findall(r"\S+\s*", text)
    pieces = [
        "".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)
    ]
    leading = text[: len(text) - len(text.lstrip())]
    if pieces and leading:
        pieces[0] = leading + pieces[0]
    return pieces or ([text] if text else [])
