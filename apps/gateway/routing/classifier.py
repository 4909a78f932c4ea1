"""Task classification for ``model: "auto"``: compiled regex heuristics over a capped window.

The classifier runs on the hot path before every ``auto`` request, so it is built for a budget of
a few tens of microseconds on a 4,000-token conversation:

* It reads the **last user message** (its head and its tail: instructions sit at the start or
  the end, pasted documents in the middle), the head of the **system prompt**, and — only when
  the last turn is a short follow-up with no clear task of its own — the head of the previous
  user message. Everything else is measured by ``len`` only. A pasted article can then neither
  slow the decision down nor steer it ("summarize this" about a text full of the word "prove").
* All cue words and phrases (several languages) are compiled at import into **one trie-shaped
  regex**, so one C-level pass finds every cue; a dict maps each hit to its category weights.
  Flat alternations cost the engine one comparison per alternative per position; the trie shares
  prefixes and costs about half. A few more features are plain ``str`` methods (``in``, ``count``,
  ``isascii``), which run in C without building anything.
* Scores are small integers in a list; the result is a frozen dataclass whose signal strings are
  the precomputed names of the cues that fired, so a call allocates little beyond the window.

The labels are a routing hint, not a truth: ``confidence`` says how clear-cut the winner was, and
the evaluation set in ``tests/data/router_eval.jsonl`` measures how often the hint is right.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from apps.gateway.providers.base import ChatMessage


class Category(StrEnum):
    CLASSIFICATION = "classification"
    EXTRACTION = "extraction"
    QA = "qa"
    SUMMARIZATION = "summarization"
    TRANSLATION = "translation"
    CHITCHAT = "chitchat"
    CODE = "code"
    MATH_REASONING = "math_reasoning"
    CREATIVE_WRITING = "creative_writing"
    COMPLEX_MULTISTEP = "complex_multistep"


class Complexity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Classification:
    """What a conversation asks for. ``signals`` names the cues that decided it (for the route
    explanation and the optimizer); ``confidence`` is in [0, 1]."""

    category: Category
    complexity: Complexity
    signals: tuple[str, ...]
    confidence: float


# --- how much text we look at -----------------------------------------------------------------
HEAD_CHARS: Final = 480  # the start of the last user message: where the instruction usually is
TAIL_CHARS: Final = 220  # its end: "...what am I doing wrong?", "What happened, in short?"
BODY_CHARS: Final = 160  # a sample of what follows the instruction (the pasted text, the code)
FINAL_LINE_MAX_CHARS: Final = 160  # a longer last line ends a paste; it is not a question
SYSTEM_CHARS: Final = 120  # the role sentence; a system prompt's rules come after it
# What a system prompt adds is remembered by the hash of its head (never its text: zero-retention
# prompts must not sit in memory): API clients send the same system prompt with every request.
SYSTEM_CACHE_SIZE: Final = 2048
PREVIOUS_CHARS: Final = 320
FOLLOW_UP_MAX_CHARS: Final = 160  # a last turn shorter than this may lean on the previous one
CHITCHAT_MAX_CHARS: Final = 140  # greetings inside a long message do not make it small talk
SHORT_TASK_CHARS: Final = 220  # an instruction longer than this has several clauses
WORD_PROBLEM_CHARS: Final = 100  # a maths question this long is a word problem, not a sum
LONG_INPUT_CHARS: Final = 1_800
LONG_CONVERSATION_CHARS: Final = 32_000  # ~8k tokens: long context alone raises complexity
MAX_SIGNALS: Final = 8

# How much a cue counts by where it is. The instruction lines of the last user message (its first
# line and its last line) say what the user wants now; the system prompt usually says what the
# whole workload is (an API client's user turn is often bare data); the text in between is mostly
# material to work on, so its words are weak evidence ("summarize this" over a text that says
# "prove"); the previous user turn only matters for short follow-ups.
INSTRUCTION_FACTOR: Final = 3
SYSTEM_FACTOR: Final = 2
BODY_FACTOR: Final = 1
PREVIOUS_FACTOR: Final = 1
QUESTION_POINTS: Final = 2
BODY_CAP: Final = 4  # the most a pasted text can add to one category: a story is full of "story"
# A first line that ends with ":" and is followed by an enumerated list is a list of instructions.
_LIST_MARKERS: Final = ("1", "-", "*", "•", "a)", "a.")

_CATEGORIES: Final = tuple(Category)
_CLS, _EXT, _QA, _SUM, _TRA, _CHAT, _CODE, _MATH, _CRE, _MULTI = range(len(_CATEGORIES))

# When two categories score the same, the one that needs the stronger model wins: under-routing
# a hard task costs the user an answer, over-routing an easy one costs a fraction of a cent.
_TIE_ORDER: Final = (_MULTI, _CODE, _MATH, _CRE, _SUM, _TRA, _EXT, _CLS, _QA, _CHAT)


def _words(text: str) -> tuple[str, ...]:
    """Phrases written as one ``|``-separated string (compact, and diff-friendly per group)."""
    return tuple(" ".join(phrase.split()) for phrase in text.split("|"))


# --- the cue lexicon --------------------------------------------------------------------------
# Each entry: weight, then phrases. A phrase ending in "*" is a stem (matches any ending);
# otherwise it must end at a word boundary. Lower-case; the window is lower-cased once.
_LEXICON: Final[dict[int, tuple[tuple[int, tuple[str, ...]], ...]]] = {
    _CLS: (
        (
            3,
            _words(
                "classif* | categori* | sentiment | label | labels | tag each | tag them | spam | "
                "phishing | intent | toxicity | sarcas* | positive or negative | positive, "
                "negative | which genre | which department | which category | which team | one "
                "of: | one of the following | sort these | put each | detect the language | which "
                "language is | priority | urgency | passive-aggressive | moderation"
            ),
        ),
        (
            2,
            _words(
                "yes or no | one word | tone | rate the | on a scale | belong to | belongs to | "
                "whether | violat* | is this email | is this review | or not | tag | router | "
                "route | options: | which of these | is this a | fruit or | or vegetable | reply "
                "with the | answer with exactly"
            ),
        ),
    ),
    _EXT: (
        (
            3,
            _words(
                "extract* | pull out | pull the | pull all | pull every | get me every | get me "
                "all | find all | find every | list all | parse | fill in this | fill in the | "
                "named entit* | key-value | key value | structured data | structured fields | "
                "identify all | return a table | as a table | into a table | as csv | table with "
                "columns | all the dates | every url | email addresses | phone numbers"
            ),
        ),
        (
            2,
            _words(
                "json | csv | schema | fields | find the | out of these | out of this | mentioned "
                "| for each, give | action items | tracking number* | list the"
            ),
        ),
        (
            1,
            _words("postal code | zip code | area code | country code"),
        ),
        (
            1,
            _words("from this | from these | from the following | in this | columns"),
        ),
    ),
    _QA: (
        (
            2,
            _words(
                "difference between | what's the difference | why | how does | who | when | is it "
                "| can i | should i | how long | how far | wie funktioniert | warum | cuál | cual "
                "es | por qué | qué es | pourquoi | quelle | quel est | qual | perché | explain "
                "how | explain the"
            ),
        ),
        (
            1,
            _words(
                "what is | what are | what does | what do | how do | what's the | was ist | "
                "explain | where | which | does the | do i | how much | how many | answer | "
                "questions | what's | wie | qué | cómo | comment | is there | are there"
            ),
        ),
    ),
    _SUM: (
        (
            3,
            _words(
                "summar* | tl;dr | tldr | sum it up | sum up | sum this up | boil down | "
                "takeaways | condense | recap | gist | résume | resume this | resumen | resume el "
                "| riassumi | riassunto | zusammenfass* | fasse | "
                "总结 | 概括 | 要約 | 要点 | кратко | "
                "short version | in short | abstract for | in a nutshell | main points | key "
                "points"
            ),
        ),
        (
            3,
            _words("overview"),
        ),
        (
            2,
            _words(
                "shorten | highlights | what happened | executive brief* | pros and cons | in two "
                "sentences | in three sentences | in one sentence | in two lines | stichpunkte* | "
                "en deux phrases"
            ),
        ),
        (
            1,
            _words("bullet points | brief | short | max 80 words | under 50 words"),
        ),
    ),
    _TRA: (
        (
            3,
            _words(
                "translat* | tradu* | übersetz* | how do you say | how to say | how would you say "
                "| wie sagt man | comment dit-on | cómo se dice | como se dice | "
                "翻译 | 翻成 | 翻訳 | "
                "訳して | 訳す | перевед* | перевод* | 번역 | locali* | mean in english | means in "
                "english"
            ),
        ),
    ),
    _CHAT: (
        (
            3,
            _words(
                "hi | hello | hey | yo | hiya | howdy | what's up | whats up | sup | thanks | "
                "thank you | thx | bye | goodbye | good morning | good night | good evening | "
                "good afternoon | lol | haha* | hehe | lmao | how are you | how's it going | how "
                "is it going | bored | talk to me | chat | just wanted to | who are you | cheer "
                "me up | have a good one | that's all | hola | qué tal | bonjour | bonsoir | ça "
                "va | guten morgen | guten abend | guten tag | wie geht* | ciao | "
                "你好 | こんにちは | "
                "привет | favorite | favourite | do you like | do you ever | ugh | are you | "
                "you're funny | that's fair | okay | ok cool | cool"
            ),
        ),
    ),
    _CODE: (
        (
            3,
            _words(
                "regex | dockerfile | traceback | typeerror | valueerror | keyerror | refactor | "
                "unit test* | pytest | stack trace | segfault | type hints | docstring | "
                "console.log | python function | one-liner | npm err | def | write a function | "
                "write a script | write code | debug* | code review"
            ),
        ),
        (
            2,
            _words(
                "javascript | typescript | golang | in go | c++ | c# | sql | bash | django | "
                "react | flask | spring boot | express app | npm | git | jsx | tsx | code | "
                "function | query | script | endpoint | middleware | bug | exception | compile* | "
                "implement | variable | backend | css | algorithm | re-render* | diff | pull "
                "request | undefined | const | class | classes | component | lock-free | crdt | "
                "mutex | reviewer"
            ),
        ),
        (
            1,
            _words(
                "python | js | java | rust | kotlin | swift | node | docker | pip | redis | api | "
                "async | jwt | error | method | html | frontend | program | import | return | "
                "print | kubernetes | database | thread* | authentication | concurren* | tests"
            ),
        ),
    ),
    _MATH: (
        (
            3,
            _words(
                "solve | equation* | prove | proof | theorem | integral | derivative | derivada | "
                "derivata | dérivée | ableitung | probability | eigenvalue* | eigenvector* | "
                "induction | calculate | calcula | how many ways | expected number | expected "
                "value | compounded | celsius | fahrenheit | °f | °c | perimeter | square root | "
                "factorial | primes | prime | irrational | cyclic | f(x) | x^ | riddle | puzzle | "
                "explain your reasoning | show your work | show that | matrix | "
                "\N{SQUARE ROOT} | \N{INTEGRAL} | \N{N-ARY SUMMATION} | "
                "\N{DOUBLE-STRUCK CAPITAL R} | \N{GREATER-THAN OR EQUAL TO} | "
                "\N{LESS-THAN OR EQUAL TO} | \N{GREEK SMALL LETTER PI}"
            ),
        ),
        (
            2,
            _words(
                "compute | percent | times | divided by | area | volume | km/h | mph | "
                "interest | discount | how much will | original price | system: | maxima | minima "
                "| massimi | minimi | how far from"
            ),
        ),
        (
            1,
            _words("how much | how many | cost | costs | total | plus | minus"),
        ),
    ),
    _CRE: (
        (
            3,
            _words(
                "poem* | poème | poema | gedicht | haiku | sonnet | limerick | bedtime | lyrics | "
                "slogan* | tagline* | names for | name ideas | a story | a short story | a poem | "
                "a scene | a speech | a toast | a song | continue this story | product "
                "description | linkedin post | copywriter | stage play | cuento | poesía | rhym* "
                "| joke | screenplay | wedding vows | melanchol* | ad copy | blog post | rap "
                "verse"
            ),
        ),
        (
            2,
            _words(
                "story | stories | chapter | scene | novel | fiction | myth | rap | verse | song "
                "| speech | toast | dialogue | compose | heartfelt | catchy | funny | fantasy | "
                "sci-fi | noir | character* | plot | escribe | écris | darker | whimsical | write "
                "a"
            ),
        ),
        (
            1,
            _words("draft a | write me | creative"),
        ),
    ),
    _MULTI: (
        (
            2,
            _words(
                "step by step | and finally | finally | roadmap | itinerary | timeline | agenda | "
                "curriculum | go-to-market | strategy | proposal | business plan | market size | "
                "risks | mitigation* | kpis | kpi | research brief | week-by-week | day-by-day | "
                "month-by-month | go/no-go | post-mortem | weighted matrix | scenarios | "
                "investigation plan | training plan | study plan | budget breakdown | checklist"
            ),
        ),
        (
            1,
            _words(
                "first | then | plan | budget | recommend* | assess | evaluate | analy* | "
                "diagnose | trends | phased | schedule"
            ),
        ),
    ),
}

# Task verbs: several distinct ones in one request ("estimate..., propose..., outline..., list...")
# are the strongest sign of a multi-step task. Counted once each, as bits of a mask.
_TASK_VERBS: Final = tuple(
    tuple(verb.split("/"))
    for verb in _words(
        "estimate | propose | outline | list | analyze/analyse | design | plan | recommend | "
        "evaluate | compare | draft | define | create | build | assess | diagnose | identify | "
        "explain | model | sketch | write | review | flag | score | prepare | suggest | walk me "
        "through | organize/organise | pick | gather | weigh | conclude | segment | project | "
        "describe | give | implement | include | measure | develop"
    )
)
# Deliverables named in a request: each one is another part of the job.
_DELIVERABLES: Final = _words(
    "itinerary | packing list | schedule | budget | agenda | timeline | roadmap | checklist | "
    "kpis | risks | pricing model | mock case | curriculum | projects | assessments | materials | "
    "templates | post-mortem | recommendation | schema | cost estimates | communication | "
    "invitation email | nutrition guide | portfolio | job search | day-of schedule | market size "
    "| go-to-market plan | strength workouts | evaluation plan | budget justification | project "
    "design | needs assessment"
)
# Words that make a task hard whatever its category: they raise complexity.
_HARD: Final = (
    (
        2,
        _words(
            "lock-free | linearizab* | memory order* | distributed | consensus | leader election "
            "| crdt | at-least-once | exactly-once | idempoten* | sharding | scalab* | 10x | "
            "prove | proof | theorem | infinitely many | continuous | cyclic | derivation | how "
            "many ways | expected number | three-act | 1,500 words | novel | weighted matrix | "
            "dilution | sliding window* | concurrent | full first | full semester | complete "
            "onboarding | irrational | refuse to | regulators | market size | go/no-go"
        ),
    ),
    (
        1,
        _words(
            "concurren* | offline | optimi* | twist | morally | each clause | scenarios | how "
            "does | explain how | difference between | what's the difference | wie funktioniert | "
            "diferencia | probability | compounded | derivative | derivada | derivata | explain "
            "your reasoning | story | sonnet | speech | lyrics | myth | toast | scene | product "
            "description | continue this story | formal tone | placeholders | eigenvalue* | "
            "integral | induction | design | architecture | redesign | trade-off* | constraints | "
            "edge cases | failure | tests | secret | recontextuali*"
        ),
    ),
)
# Requested output formats, reported as signals (they do not pick a category on their own).
_FORMATS: Final = (
    ("format:json", ("json",)),
    ("format:table", ("table", "as a table", "in a table", "markdown table")),
    ("format:csv", ("csv",)),
    ("format:list", ("bullet points", "bulleted list", "bullet list", "numbered list")),
)

_LANGUAGES: Final = _words(
    "latin american spanish | mexican spanish | european portuguese | simplified chinese | "
    "traditional chinese | canadian french | swiss german | english | french | spanish | german | "
    "italian | portuguese | brazilian portuguese | japanese | chinese | mandarin | cantonese | "
    "korean | russian | arabic | hindi | dutch | polish | greek | turkish | swedish | norwegian | "
    "danish | finnish | czech | ukrainian | hebrew | vietnamese | thai | indonesian | romanian | "
    "hungarian | inglés | ingles | englisch | englische | englischen | anglais | inglese | inglês "
    "| francés | français | francais | französisch | francese | francês | español | espanol | "
    "espagnol | spanisch | spagnolo | espanhol | alemán | allemand | deutsch | tedesco | alemão | "
    "italiano | italien | italienisch | japonés | japonais | japanisch | giapponese | chino | "
    "chinois | chinesisch | polnisch | polonais"
)
_LANGUAGE_PREPOSITIONS: Final = ("in", "into", "to", "auf", "ins", "en", "al", "em", "para", "a")
# "English to Korean": a language pair names a translation on its own.
_LANGUAGE_PAIR_NAMES: Final = _LANGUAGES[_LANGUAGES.index("english") : _LANGUAGES.index("inglés")]
_CJK_LANGUAGES: Final = _words(
    "英文 | 英语 | 英語 | 中文 | 日语 | 日文 | 日本語 | 法语 | 德语 | "
    "西班牙语 | 韩语 | английск* | французск* | немецк*"
)


@dataclass(frozen=True, slots=True)
class _Cue:
    signal: str
    weights: tuple[tuple[int, int], ...]  # (category index, weight)
    verb_bit: int
    deliverable: bool
    hard: int
    reported: bool  # named in the signals (a pure task verb or deliverable is not)


def _build_cues() -> tuple[dict[str, _Cue], list[str]]:
    """Merge every role a phrase plays into one entry, keyed by the phrase as matched; and the
    phrases as written (stems keep their ``*``), for the regex."""
    weights: dict[str, dict[int, int]] = {}
    verb_bits: dict[str, int] = {}
    deliverables: set[str] = set()
    hard: dict[str, int] = {}

    def add_weight(phrase: str, category: int, weight: int) -> None:
        per_category = weights.setdefault(phrase, {})
        per_category[category] = max(per_category.get(category, 0), weight)

    for category, groups in _LEXICON.items():
        for weight, phrases in groups:
            for phrase in phrases:
                add_weight(phrase, category, weight)
    for language in _LANGUAGES:
        add_weight(language, _TRA, 1)
        add_weight(f"{language} version", _TRA, 3)
        for preposition in _LANGUAGE_PREPOSITIONS:
            add_weight(f"{preposition} {language}", _TRA, 2)
        add_weight(f"{language} to", _TRA, 1)
    for source in _LANGUAGE_PAIR_NAMES:
        for target in _LANGUAGE_PAIR_NAMES:
            if source != target:
                add_weight(f"{source} to {target}", _TRA, 3)
    for language in _CJK_LANGUAGES:
        add_weight(language, _TRA, 1)
    for bit, verbs in enumerate(_TASK_VERBS):
        for verb in verbs:
            verb_bits.setdefault(verb, 1 << bit)
            weights.setdefault(verb, {})
    for deliverable in _DELIVERABLES:
        deliverables.add(deliverable)
        weights.setdefault(deliverable, {})
    for level, phrases in _HARD:
        for phrase in phrases:
            hard[phrase] = max(hard.get(phrase, 0), level)
            weights.setdefault(phrase, {})
    for _signal, phrases in _FORMATS:
        for phrase in phrases:
            weights.setdefault(phrase, {})

    format_signal = {phrase: signal for signal, phrases in _FORMATS for phrase in phrases}
    cues: dict[str, _Cue] = {}
    for phrase, per_category in weights.items():
        matched = phrase.removesuffix("*")
        cues[matched] = _Cue(
            signal=format_signal.get(phrase, f"kw:{matched}"),
            weights=tuple(sorted(per_category.items())),
            verb_bit=verb_bits.get(phrase, 0),
            deliverable=phrase in deliverables,
            hard=hard.get(phrase, 0),
            reported=bool(per_category) or phrase in hard or phrase in format_signal,
        )
    return cues, sorted(weights)


_Trie = dict[str, "_Trie"]
_WORD_END_KEY: Final = ""  # trie key: a whole word ends here
_STEM_END: Final = "*"  # trie key: a stem ends here (phrases hold no other "*")
_WORD_END: Final = r"(?![a-z0-9_])"


def _trie_pattern(phrases: Iterable[str]) -> str:
    """One regex alternation shaped as a trie, longest continuation first.

    Stems (``summar*``) end without a boundary check; whole words must not run on into another
    letter or digit, so "hi" does not fire inside "this".
    """
    root: _Trie = {}
    for phrase in phrases:
        node = root
        for char in phrase.removesuffix("*"):
            node = node.setdefault(char, {})
        node[_STEM_END if phrase.endswith("*") else _WORD_END_KEY] = {}

    def render(node: _Trie) -> str:
        branches = [
            re.escape(char) + render(child)
            for char, child in sorted(node.items())
            if char not in (_WORD_END_KEY, _STEM_END)
        ]
        # A stem ending here matches a superset of a whole word ending here.
        if _STEM_END in node:
            branches.append("")
        elif _WORD_END_KEY in node:
            branches.append(_WORD_END)
        if len(branches) == 1:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    return r"(?<![a-z0-9_])" + render(root)


_CUES, _PHRASES = _build_cues()
_CUE_RE: Final = re.compile(_trie_pattern(_PHRASES))
# Arithmetic between numbers ("3x + 7 = 2x", "17% of", "x^2"). A bare hyphen is left out so
# dates and ranges ("2024-05-02", "5-10") do not look like maths, and so is a bare "12%":
# business text is full of percentages.
_ARITH_RE: Final = re.compile(
    # One leading \d (not one per alternative): twice as fast in the regex engine.
    r"\d(?: ?[+*/=^" "\N{MULTIPLICATION SIGN}\N{DIVISION SIGN}" r"] ?[\d(]| - \d| ?% of)|\^\d"
)
# Scripts: any CJK / Cyrillic / Hangul / Arabic / Devanagari / Greek / Hebrew / Thai character.
_SCRIPT_RE: Final = re.compile(
    r"(?P<cjk>[\u3040-\u30ff\u3400-\u9fff])|(?P<hangul>[\uac00-\ud7af])"
    r"|(?P<cyrillic>[\u0400-\u04ff])|(?P<arabic>[\u0600-\u06ff])|(?P<devanagari>[\u0900-\u097f])"
    r"|(?P<greek>[\u0370-\u03ff])|(?P<hebrew>[\u0590-\u05ff])|(?P<thai>[\u0e00-\u0e7f])"
)
_SCRIPT_SIGNALS: Final = {name: f"script:{name}" for name in _SCRIPT_RE.groupindex}
_FENCE: Final = "```"
# Code fences are looked for in this many characters at each end of a message: a linear search
# through a 16k-character paste costs ~4 µs, a tenth of the whole budget.
FENCE_SEARCH_CHARS: Final = 1_500
_CODE_LINE_MARKS: Final = ("();", "){", ") {", "=>", "def ", "#include", "npm err", "    return")


class _Scan:
    """Mutable accumulator for one classification (one object per call, reused across parts)."""

    __slots__ = ("deliverables", "hard", "scores", "signals", "verbs")

    def __init__(self) -> None:
        self.scores = [0] * len(_CATEGORIES)
        self.signals: list[str] = []
        self.verbs = 0
        self.deliverables = 0
        self.hard = 0

    def signal(self, name: str) -> None:
        if len(self.signals) < MAX_SIGNALS and name not in self.signals:
            self.signals.append(name)

    def text(self, window: str, factor: int, *, instruction: bool, cap: int = 0) -> None:
        """Score the cues in ``window`` (lower-case). With ``cap``, no category gains more than
        ``cap`` from this window."""
        matches = _CUE_RE.findall(window)
        if not matches:
            return
        scores = self.scores
        signals = self.signals
        floor = scores.copy() if cap else scores
        # dict.fromkeys dedupes in C, keeping order: a word repeated in pasted data is one cue.
        for match in dict.fromkeys(matches) if len(matches) > 1 else matches:
            cue = _CUES.get(match)
            if cue is None:
                continue
            for category, weight in cue.weights:
                scores[category] += weight * factor
            if instruction:
                self.verbs |= cue.verb_bit
                self.deliverables += cue.deliverable
                self.hard += cue.hard
            if cue.reported and len(signals) < MAX_SIGNALS and cue.signal not in signals:
                signals.append(cue.signal)
        if cap:
            for index, start in enumerate(floor):
                if scores[index] > start + cap:
                    scores[index] = start + cap


_SENTENCE_END_RE: Final = re.compile(r"[.?!:] ")
_ENDS: Final = (". ", "? ", "! ", ": ")


def _regions(text: str) -> tuple[str, str, str, bool]:
    """Split a user message into (first instruction, body sample, end, whether the end is an
    instruction), lower-cased. The end is an instruction when it is a short last line ("what am I
    doing wrong") or the message is one unbroken paragraph; otherwise it is the end of a paste.

    Only C-level ``find``/``rfind`` and slicing over bounded ranges: a 16k-character paste
    costs no more than a 1k one.
    """
    size = len(text)
    newline = text.find("\n", 0, HEAD_CHARS)
    wall = newline == -1 and size > HEAD_CHARS  # one unbroken paragraph longer than the head
    listed = newline != -1 and text[newline - 1 : newline] == ":"
    if wall:
        # Only its first sentence is the instruction; the rest of the head is material.
        sentence = _SENTENCE_END_RE.search(text, 0, HEAD_CHARS)
        first_end = sentence.end() if sentence is not None else HEAD_CHARS
    elif newline == -1 or (listed and text.startswith(_LIST_MARKERS, newline + 1)):
        first_end = min(size, HEAD_CHARS)
    else:
        first_end = newline
    tail_start = max(first_end, size - TAIL_CHARS)
    last_newline = text.rfind("\n", tail_start)
    final_start = last_newline + 1 if last_newline != -1 else tail_start
    if wall and last_newline == -1:
        # ...and its last sentence: "...as the report shows. What changed between quarters?"
        final_start = max(final_start, *(text.rfind(end, tail_start) + 2 for end in _ENDS))
    body_end = min(final_start, first_end + BODY_CHARS)
    final_is_instruction = (
        newline == -1 and last_newline == -1
        if last_newline == -1
        else size - final_start <= FINAL_LINE_MAX_CHARS
    )
    return (
        text[:first_end].lower(),
        text[first_end:body_end].lower() if body_end > first_end else "",
        text[final_start:].lower() if final_start < size else "",
        final_is_instruction,
    )


@dataclass(frozen=True, slots=True)
class _Contribution:
    scores: tuple[tuple[int, int], ...]  # (category index, points), non-zero only
    signals: tuple[str, ...]


_SYSTEM_CACHE: dict[int, _Contribution] = {}


def _system_contribution(head: str) -> _Contribution:
    key = hash(head)
    contribution = _SYSTEM_CACHE.get(key)
    if contribution is None:
        scan = _Scan()
        scan.text(head.lower(), SYSTEM_FACTOR, instruction=False)
        contribution = _Contribution(
            scores=tuple((i, points) for i, points in enumerate(scan.scores) if points),
            signals=tuple(scan.signals),
        )
        if len(_SYSTEM_CACHE) >= SYSTEM_CACHE_SIZE:
            _SYSTEM_CACHE.clear()  # cheaper than LRU bookkeeping on every call
        _SYSTEM_CACHE[key] = contribution
    return contribution


def _has_fence(text: str) -> bool:
    if text.find(_FENCE, 0, FENCE_SEARCH_CHARS) != -1:
        return True
    return len(text) > FENCE_SEARCH_CHARS and text.find(_FENCE, -FENCE_SEARCH_CHARS) != -1


def _margin(scores: list[int]) -> int:
    """How far the leading category is ahead of the runner-up."""
    best = second = 0
    for score in scores:
        if score > best:
            best, second = score, best
        elif score > second:
            second = score
    return best - second


def classify(messages: Sequence[ChatMessage]) -> Classification:
    """Classify a conversation into a task :class:`Category` and a :class:`Complexity`.

    Looks at the last user message, the system prompt and, for short follow-ups, the previous
    user message; never at more than a few hundred characters of each.
    """
    last = ""
    previous = ""
    system = ""
    assistant_code = False
    seen_assistant = False
    total_chars = 0
    for message in reversed(messages):
        content = message.content
        total_chars += len(content)
        role = message.role
        if role == "user":
            if not last:
                last = content
            elif not previous:
                previous = content
        elif role in ("system", "developer"):
            system = content  # walking backwards, the earliest system prompt wins
        elif role == "assistant" and not seen_assistant:
            seen_assistant = True
            assistant_code = _has_fence(content)

    scan = _Scan()
    scores = scan.scores
    first, body, final, final_is_instruction = _regions(last)
    scan.text(first, INSTRUCTION_FACTOR, instruction=True)
    if final and final_is_instruction:
        scan.text(final, INSTRUCTION_FACTOR, instruction=True)

    # Structure of the last message, all C-level str operations.
    fences = _has_fence(last)
    if fences:
        scores[_CODE] += 8
        scan.signal("code:fence")
    elif any(mark in first or mark in body for mark in _CODE_LINE_MARKS):
        scores[_CODE] += 4
        scan.signal("code:syntax")
    if not fences:
        arithmetic = len(_ARITH_RE.findall(first))
        if final_is_instruction:
            arithmetic += len(_ARITH_RE.findall(final))
        if arithmetic:
            scores[_MATH] += INSTRUCTION_FACTOR * (1 + min(arithmetic, 3))
            scan.signal("math:arithmetic")
    question = "?" in first or (final_is_instruction and "?" in final)
    if question:
        scan.signal("question")
    if not (first.isascii() and final.isascii()):
        script = _SCRIPT_RE.search(first) or _SCRIPT_RE.search(final)
        if script is not None and script.lastgroup is not None:
            scan.signal(_SCRIPT_SIGNALS[script.lastgroup])
    if len(last) > CHITCHAT_MAX_CHARS:
        # Greetings and thanks inside a real request are politeness, not small talk.
        scores[_CHAT] = 0

    parts = scan.verbs.bit_count() + scan.deliverables
    if parts >= 3:
        scores[_MULTI] += 4 * (parts - 2)
        scan.signal(f"steps:{min(parts, 9)}")

    if system:
        contribution = _system_contribution(system[:SYSTEM_CHARS])
        for index, points in contribution.scores:
            scores[index] += points
        for name in contribution.signals:
            scan.signal(name)

    # The pasted material is read last and only when it could still change the winner: each
    # body window adds at most BODY_CAP to a category. Scanning text costs ~15 ns a character in
    # the regex engine whatever the vocabulary, so skipping it is the biggest saving there is.
    body_windows = (1 if body else 0) + (1 if final and not final_is_instruction else 0)
    if body_windows and _margin(scores) <= body_windows * BODY_CAP:
        if body:
            scan.text(body, BODY_FACTOR, instruction=False, cap=BODY_CAP)
        if final and not final_is_instruction:
            scan.text(final, BODY_FACTOR, instruction=False, cap=BODY_CAP)
    follow_up = len(last) < FOLLOW_UP_MAX_CHARS and max(scores) < 3 * INSTRUCTION_FACTOR
    if follow_up and (previous or assistant_code):
        scan.signal("follow-up")
        if previous:
            head, _body, _end, _end_is_instruction = _regions(previous[:PREVIOUS_CHARS])
            scan.text(head, PREVIOUS_FACTOR, instruction=False)
            if _has_fence(previous):
                scores[_CODE] += 4
        if assistant_code:
            scores[_CODE] += 3

    evidence = max(scores) > 0
    if question:
        # Added last: a question mark tips a close call towards Q&A but is no cue on its own.
        scores[_QA] += QUESTION_POINTS
    best = _TIE_ORDER[0]
    best_score = -1
    second_score = 0
    for index in _TIE_ORDER:
        score = scores[index]
        if score > best_score:
            second_score = max(second_score, best_score)
            best, best_score = index, score
        elif score > second_score:
            second_score = score
    if not evidence:
        # No cue at all: a question is a question, anything short is small talk, and neither
        # with much confidence.
        best = _CHAT if not question and len(last) <= CHITCHAT_MAX_CHARS else _QA
        confidence = 0.3
        scan.signal("fallback")
    else:
        confidence = round(best_score / (best_score + second_score + 1), 2)

    category = _CATEGORIES[best]
    complexity = _complexity(
        category=category,
        instruction_chars=len(first) + (len(final) if final_is_instruction else 0),
        last_chars=len(last),
        total_chars=total_chars,
        parts=parts,
        hard=scan.hard,
        fences=fences,
    )
    return Classification(
        category=category,
        complexity=complexity,
        signals=tuple(scan.signals),
        confidence=confidence,
    )


def _complexity(
    *,
    category: Category,
    instruction_chars: int,
    last_chars: int,
    total_chars: int,
    parts: int,
    hard: int,
    fences: bool,
) -> Complexity:
    """Low / medium / high from depth cues, the number of parts, and sizes.

    The size of pasted material barely counts: summarizing or extracting from a long text is
    not harder in kind, only longer (which the context-window check handles). What counts is
    how much the instruction asks for.
    """
    if category is Category.CHITCHAT:
        return Complexity.LOW
    points = hard
    if instruction_chars > SHORT_TASK_CHARS:
        points += 1
    if last_chars > LONG_INPUT_CHARS:
        points += 1
    if parts >= 3:
        points += 1
    if parts >= 5:
        points += 1
    if total_chars > LONG_CONVERSATION_CHARS:
        points += 1
    if category is Category.COMPLEX_MULTISTEP:
        points += 1  # several deliverables are never a quick job
    elif category is Category.MATH_REASONING and instruction_chars > WORD_PROBLEM_CHARS:
        points += 1
    elif category is Category.CODE and fences and last_chars > SHORT_TASK_CHARS:
        points += 1  # there is code to read and change, not just to write from a sentence
    if points <= 0:
        return Complexity.LOW
    if points <= 2:
        return Complexity.MEDIUM
    return Complexity.HIGH
