"""Routing policies: the document, its validation, its inheritance and its evaluation.

A policy document is JSON (also written and shown as YAML); ``docs/routing.md`` § Routing
policies describes every field. This module is pure — no database, no I/O — so the hot path, the
dashboard and the dry run share one evaluation, and validation can be tested line by line:

- :func:`policy_text_parse` turns JSON or YAML text into data plus a map from document paths
  (``rules[2].when.category[0]``) to source lines;
- :func:`policy_document_validate` checks a document's shape and names against the catalog and
  reports *every* problem with its path (and line, for text input);
- :func:`policy_compile` resolves ``extends`` into an :class:`EffectivePolicy`, refusing loops;
- :func:`policy_route` picks the model and fallback chain for one request.

``extends`` is resolved when a policy is *selected* for a request (the selector loads the parent's
current version), not frozen at save time: editing a parent policy changes every policy that
extends it at once, which is what "extends" promises. Loops cannot be stored — every save,
rollback and deletion checks the whole chain — and :func:`policy_compile` still refuses one,
so a bad graph never loops at request time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol

import yaml
from django.conf import settings

from llmwise.errors import ApplicationError

from ..models import CatalogModel, Provider
from ..pricing import reservation_micros
from .classifier import Category, Complexity

AUTO: Final = "auto"
# The classifier's vocabulary: a rule naming anything else is a typo that would silently never
# match, so validation refuses it.
CATEGORIES: Final = tuple(category.value for category in Category)
COMPLEXITIES: Final = tuple(complexity.value for complexity in Complexity)


class AppliesTo:
    AUTO: Final = "auto"  # rules route only requests for model "auto"
    ALL: Final = "all"  # rules route every request, whatever model it names


APPLIES_TO: Final = (AppliesTo.AUTO, AppliesTo.ALL)

EXTENDS_MAX_DEPTH: Final = 5  # a policy, its parent, ... : deeper is a design smell, not a need
RULES_MAX: Final = 100
RULE_NAME_MAX_CHARS: Final = 100
DOCUMENT_MAX_CHARS: Final = 64_000
ISSUES_REPORTED_MAX: Final = 50
MICROS_PER_USD: Final = 1_000_000
MAX_PRICE_USD_LIMIT: Final = Decimal(1000)
LATENCY_BUDGET_MAX_MS: Final = 600_000
POLICY_NAME_MAX_CHARS: Final = 60
POLICY_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$")

TOP_LEVEL_KEYS: Final = (
    "extends",
    "applies_to",
    "rules",
    "default",
    "max_price_per_request_usd",
    "allowed_providers",
    "prefer_byok",
    "latency_budget_ms",
)
RULE_KEYS: Final = ("name", "when", "model", "fallbacks")
WHEN_KEYS: Final = ("category", "complexity", "requested_model")
TARGET_KEYS: Final = ("model", "fallbacks")


def chain_max_length() -> int:
    """How many models one chain (a model and its fallbacks) may name: the mesh's own limit, so
    a policy can never build a chain that a request could not name."""
    return int(settings.GATEWAY_MESH_MAX_CHAIN)


# --- errors -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a document: where (path, and line for text input) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "document"
        suffix = f" (line {self.line})" if self.line is not None else ""
        return f"{where}: {self.message}{suffix}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}


class PolicyInvalid(ApplicationError):
    """The document was refused; ``issues`` lists every problem found, first one in ``message``."""

    code = "invalid_policy"

    def __init__(self, issues: list[PolicyIssue]):
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"Invalid policy: {first}{more}", param=first.path or None)
        self.issues = issues


# --- the catalog, as validation and evaluation see it -----------------------------------------
@dataclass(frozen=True)
class PolicyCatalog:
    """The enabled catalog models by id and the aliases naming them (built by a selector)."""

    models: Mapping[str, CatalogModel]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> CatalogModel | None:
        """The model ``name`` means: an id wins over an alias of the same spelling."""
        model = self.models.get(name)
        if model is not None:
            return model
        target = self.aliases.get(name)
        return self.models.get(target) if target is not None else None


# --- text ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedPolicyText:
    document: Any
    lines: Mapping[str, int]
    format: str  # "json" or "yaml"


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _line_map(
    node: yaml.Node, path: str, lines: dict[str, int], issues: list[PolicyIssue], seen: set[int]
) -> None:
    """Record the line of every path under ``node``; refuse aliases and duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        children = []
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in keys:
                issues.append(PolicyIssue(_child(path, key), "duplicate key", line))
                continue
            keys.add(key)
            children.append((_child(path, key), line, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [
            (_child(path, index), item.start_mark.line + 1, item)
            for index, item in enumerate(node.value)
        ]
    else:
        return
    for child, line, child_node in children:
        if id(child_node) in seen:
            # An alias re-uses a node: refusing it keeps a 64 KB text from expanding into a huge
            # document ("billion laughs") when it is validated or stored as JSON. (An alias's
            # node carries its anchor's position, hence the parent's line.)
            where = line if isinstance(node, yaml.MappingNode) else node.start_mark.line + 1
            issues.append(PolicyIssue(child, "YAML anchors and aliases are not supported", where))
            continue
        seen.add(id(child_node))
        lines[child] = line
        _line_map(child_node, child, lines, issues, seen)


def _yaml_lines(text: str) -> tuple[dict[str, int], list[PolicyIssue]]:
    lines: dict[str, int] = {}
    issues: list[PolicyIssue] = []
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        lines[""] = node.start_mark.line + 1
        _line_map(node, "", lines, issues, set())
    return lines, issues


def _yaml_error_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def policy_text_parse(*, text: str) -> ParsedPolicyText:
    """Parse a policy written as JSON (when it starts with ``{``) or YAML.

    Raises :class:`PolicyInvalid` for a syntax error (with its line), an empty or oversized
    text, duplicate keys or YAML aliases. Shape and names are :func:`policy_document_validate`'s.
    """
    if len(text) > DOCUMENT_MAX_CHARS:
        raise PolicyInvalid(
            [PolicyIssue("", f"the document is longer than {DOCUMENT_MAX_CHARS} characters")]
        )
    if not text.strip():
        raise PolicyInvalid([PolicyIssue("", "the document is empty")])
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyInvalid(
                [PolicyIssue("", f"not valid JSON: {exc.msg}", exc.lineno)]
            ) from exc
        try:
            lines, issues = _yaml_lines(text)
        except yaml.YAMLError:
            # Valid JSON that YAML 1.1 reads differently (tabs, odd escapes): keep the document,
            # lose only the line numbers.
            lines, issues = {}, []
        if issues:
            raise PolicyInvalid(issues)
        return ParsedPolicyText(document=document, lines=lines, format="json")
    try:
        lines, issues = _yaml_lines(text)
        if issues:
            raise PolicyInvalid(issues)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyInvalid(
            [PolicyIssue("", f"not valid YAML: {problem}", _yaml_error_line(exc))]
        ) from exc
    return ParsedPolicyText(document=document, lines=lines, format="yaml")


class _PolicyDumper(yaml.SafeDumper):
    """YAML as people write policies: lists of names inline (``category: [code, qa]``), block
    sequences indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    inline = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=inline)


_PolicyDumper.add_representer(list, _represent_list)


def policy_document_dump(*, document: Any, fmt: str) -> str:
    """The document as the editor shows it: YAML (keys in document order) or indented JSON."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(
        document,
        Dumper=_PolicyDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )


# --- validation -------------------------------------------------------------------------------
class _Checker:
    """Walks a document collecting issues; every check names its path."""

    def __init__(self, *, catalog: PolicyCatalog, lines: Mapping[str, int]):
        self.catalog = catalog
        self.lines = lines
        self.issues: list[PolicyIssue] = []

    def line_of(self, path: str) -> int | None:
        # A missing key has no line of its own: point at the nearest enclosing one.
        probe = path
        while True:
            if probe in self.lines:
                return self.lines[probe]
            if not probe:
                return None
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""

    def add(self, path: str, message: str) -> None:
        self.issues.append(PolicyIssue(path, message, self.line_of(path)))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping (an object), not {_type_name(value)}")
            return None
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                self.add(_child(path, str(key)), f"unknown key; expected one of {_names(allowed)}")
        return value

    def string_list(self, value: Any, path: str) -> list[str] | None:
        if not isinstance(value, list):
            self.add(path, f"must be a list of strings, not {_type_name(value)}")
            return None
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.add(_child(path, index), f"must be a string, not {_type_name(item)}")
                good = False
        return value if good else None

    def vocabulary(self, value: Any, path: str, allowed: tuple[str, ...], what: str) -> None:
        items = self.string_list(value, path)
        if items is None:
            return
        if not items:
            self.add(path, f"must name at least one {what}; leave the key out to match any")
        for index, item in enumerate(items):
            if item not in allowed:
                self.add(
                    _child(path, index),
                    f"unknown {what} {item!r}; expected one of {_names(allowed)}",
                )

    def model_name(self, value: Any, path: str, *, auto_allowed: bool) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"must be a model name (a string), not {_type_name(value)}")
            return None
        if value == AUTO:
            if not auto_allowed:
                self.add(path, "'auto' cannot be a fallback; the auto-router builds its own chain")
                return None
            return value
        if self.catalog.resolve(value) is None:
            self.add(path, f"unknown model {value!r}; GET /v1/models lists the models")
            return None
        return value

    def target(self, value: dict[str, Any], path: str) -> None:
        """``model`` + optional ``fallbacks`` (a rule or the default)."""
        if "model" not in value:
            self.add(_child(path, "model"), "is required")
            model = None
        else:
            model = self.model_name(value["model"], _child(path, "model"), auto_allowed=True)
        if "fallbacks" not in value:
            return
        fallbacks_path = _child(path, "fallbacks")
        fallbacks = self.string_list(value["fallbacks"], fallbacks_path)
        if fallbacks is None:
            return
        if model == AUTO and fallbacks:
            self.add(fallbacks_path, "must be empty with model 'auto' (it builds its own chain)")
            return
        limit = chain_max_length()
        if 1 + len(fallbacks) > limit:
            self.add(
                fallbacks_path,
                f"the chain has {1 + len(fallbacks)} models (the model and {len(fallbacks)} "
                f"fallbacks); at most {limit} are allowed",
            )
        seen: set[str] = set()
        if model is not None:
            resolved = self.catalog.resolve(model)
            seen.add(resolved.id if resolved is not None else model)
        for index, name in enumerate(fallbacks):
            item_path = _child(fallbacks_path, index)
            if self.model_name(name, item_path, auto_allowed=False) is None:
                continue
            resolved = self.catalog.resolve(name)
            canonical = resolved.id if resolved is not None else name
            if canonical in seen:
                self.add(item_path, f"{name!r} is already in this chain")
            seen.add(canonical)

    def rule(self, value: Any, path: str) -> None:
        rule = self.mapping(value, path, RULE_KEYS)
        if rule is None:
            return
        if "name" in rule:
            name = rule["name"]
            if not isinstance(name, str) or len(name) > RULE_NAME_MAX_CHARS:
                self.add(
                    _child(path, "name"), f"must be a string of at most {RULE_NAME_MAX_CHARS} chars"
                )
        if "when" in rule:
            when_path = _child(path, "when")
            when = self.mapping(rule["when"], when_path, WHEN_KEYS)
            if when is not None:
                if "category" in when:
                    self.vocabulary(
                        when["category"], _child(when_path, "category"), CATEGORIES, "category"
                    )
                if "complexity" in when:
                    self.vocabulary(
                        when["complexity"],
                        _child(when_path, "complexity"),
                        COMPLEXITIES,
                        "complexity",
                    )
                if "requested_model" in when:
                    self.requested_models(
                        when["requested_model"], _child(when_path, "requested_model")
                    )
        self.target(rule, path)

    def requested_models(self, value: Any, path: str) -> None:
        items = self.string_list(value, path)
        if items is None:
            return
        if not items:
            self.add(path, "must name at least one model; leave the key out to match any")
        for index, item in enumerate(items):
            self.model_name(item, _child(path, index), auto_allowed=True)

    def document(self, value: Any) -> None:
        document = self.mapping(value, "", TOP_LEVEL_KEYS)
        if document is None:
            return
        if "extends" in document:
            extends = document["extends"]
            if not isinstance(extends, str) or not POLICY_NAME.match(extends):
                self.add("extends", "must be the name of another policy of this organization")
        if "applies_to" in document and document["applies_to"] not in APPLIES_TO:
            self.add("applies_to", f"must be one of {_names(APPLIES_TO)}")
        if "rules" in document:
            rules = document["rules"]
            if not isinstance(rules, list):
                self.add("rules", f"must be a list of rules, not {_type_name(rules)}")
            elif len(rules) > RULES_MAX:
                self.add("rules", f"has {len(rules)} rules; at most {RULES_MAX} are allowed")
            else:
                for index, rule in enumerate(rules):
                    self.rule(rule, _child("rules", index))
        if "default" in document:
            default = self.mapping(document["default"], "default", TARGET_KEYS)
            if default is not None:
                self.target(default, "default")
        if "max_price_per_request_usd" in document:
            _price_micros(document["max_price_per_request_usd"], self)
        if "allowed_providers" in document:
            self.vocabulary(
                document["allowed_providers"],
                "allowed_providers",
                tuple(Provider.values),
                "provider",
            )
        if "prefer_byok" in document and not isinstance(document["prefer_byok"], bool):
            self.add("prefer_byok", "must be true or false")
        if "latency_budget_ms" in document:
            budget = document["latency_budget_ms"]
            if (
                not isinstance(budget, int)
                or isinstance(budget, bool)
                or not 1 <= budget <= LATENCY_BUDGET_MAX_MS
            ):
                self.add(
                    "latency_budget_ms",
                    f"must be a whole number of milliseconds from 1 to {LATENCY_BUDGET_MAX_MS}",
                )


def _type_name(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _names(values: Collection[str]) -> str:
    return ", ".join(values)


def _price_micros(value: Any, checker: _Checker | None = None) -> int | None:
    """``max_price_per_request_usd`` in micro-USD (rounded down, so the cap is never exceeded)."""
    problem = f"must be a number of USD above 0 and at most {MAX_PRICE_USD_LIMIT}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        if checker is not None:
            checker.add("max_price_per_request_usd", problem)
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or not Decimal(0) < amount <= MAX_PRICE_USD_LIMIT:
        if checker is not None:
            checker.add("max_price_per_request_usd", problem)
        return None
    micros = int(amount * MICROS_PER_USD)
    if micros < 1:
        if checker is not None:
            checker.add("max_price_per_request_usd", "must be at least 0.000001 USD")
        return None
    return micros


def policy_document_validate(
    *, document: Any, catalog: PolicyCatalog, lines: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Check one document's own shape and names; returns it unchanged when valid.

    Raises :class:`PolicyInvalid` listing every issue (path, message, line when ``lines`` came
    from :func:`policy_text_parse`). What depends on other policies (``extends``) is
    :func:`policy_compile`'s.
    """
    checker = _Checker(catalog=catalog, lines=lines or {})
    checker.document(document)
    if checker.issues:
        # In reading order, so the first error reported is the first one in the text.
        issues = sorted(checker.issues, key=lambda issue: issue.line or 0)
        raise PolicyInvalid(issues[:ISSUES_REPORTED_MAX])
    assert isinstance(document, dict)  # noqa: S101 - the checker refused anything else
    return document


# --- compiled form ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyRule:
    """One rule, compiled. ``None`` in a condition means "any"."""

    policy: str  # the policy the rule was written in ("" for an unsaved document)
    index: int  # its position in that policy's own ``rules``
    name: str
    categories: frozenset[str] | None
    complexities: frozenset[str] | None
    requested_models: frozenset[str] | None
    model: str
    fallbacks: tuple[str, ...]

    @property
    def label(self) -> str:
        where = f"{self.policy}." if self.policy else ""
        named = f" ({self.name})" if self.name else ""
        return f"{where}rules[{self.index}]{named}"


@dataclass(frozen=True)
class PolicyTarget:
    model: str
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class EffectivePolicy:
    """A policy with ``extends`` resolved: what evaluation reads.

    Merging (child over parent): the child's rules come first, then the parent's, so a child
    refines and the parent still catches the rest; every other field the child sets replaces the
    parent's.
    """

    name: str
    lineage: tuple[str, ...]  # the policy, then what it extends, and so on
    rules: tuple[PolicyRule, ...]
    default: PolicyTarget | None
    applies_to: str
    max_price_micros: int | None
    allowed_providers: frozenset[str] | None
    prefer_byok: bool
    latency_budget_ms: int | None

    @property
    def needs_classification(self) -> bool:
        """Whether any rule looks at the category or complexity (else skip the classifier)."""
        return any(
            rule.categories is not None or rule.complexities is not None for rule in self.rules
        )


def _optional_set(when: Mapping[str, Any], key: str) -> frozenset[str] | None:
    values = when.get(key)
    return frozenset(values) if values is not None else None


def _target(value: Mapping[str, Any]) -> PolicyTarget:
    return PolicyTarget(model=value["model"], fallbacks=tuple(value.get("fallbacks", ())))


def _rules_of(name: str, document: Mapping[str, Any]) -> Iterator[PolicyRule]:
    for index, rule in enumerate(document.get("rules", ())):
        when = rule.get("when") or {}
        yield PolicyRule(
            policy=name,
            index=index,
            name=rule.get("name", ""),
            categories=_optional_set(when, "category"),
            complexities=_optional_set(when, "complexity"),
            requested_models=_optional_set(when, "requested_model"),
            model=rule["model"],
            fallbacks=tuple(rule.get("fallbacks", ())),
        )


PolicyLookup = Callable[[str], Mapping[str, Any] | None]


def policy_lineage(
    *, name: str, document: Mapping[str, Any], lookup: PolicyLookup
) -> list[tuple[str, Mapping[str, Any]]]:
    """``[(name, document), (parent, its document), ...]`` following ``extends``.

    ``lookup(name)`` returns another policy's current document, or ``None`` when there is no such
    policy. Raises :class:`PolicyInvalid` at ``extends`` for an unknown parent, a loop or a chain
    deeper than :data:`EXTENDS_MAX_DEPTH`.
    """
    chain: list[tuple[str, Mapping[str, Any]]] = [(name, document)]
    current = document
    while "extends" in current:
        parent = current["extends"]
        names = [link for link, _ in chain]
        if parent in names:
            loop = " → ".join([*names[names.index(parent) :], parent])
            raise PolicyInvalid([PolicyIssue("extends", f"extends loops: {loop}")])
        if len(chain) > EXTENDS_MAX_DEPTH:
            raise PolicyInvalid(
                [
                    PolicyIssue(
                        "extends",
                        f"extends is nested deeper than {EXTENDS_MAX_DEPTH} policies "
                        f"({' → '.join([*names, parent])})",
                    )
                ]
            )
        parent_document = lookup(parent)
        if parent_document is None:
            via = f" (via {chain[-1][0]})" if len(chain) > 1 else ""
            raise PolicyInvalid(
                [PolicyIssue("extends", f"there is no policy named {parent!r}{via}")]
            )
        chain.append((parent, parent_document))
        current = parent_document
    return chain


def policy_compile(
    *, name: str, document: Mapping[str, Any], lookup: PolicyLookup | None = None
) -> EffectivePolicy:
    """The effective policy for a validated ``document`` named ``name`` (``extends`` resolved)."""
    chain = policy_lineage(name=name, document=document, lookup=lookup or (lambda _name: None))
    rules: list[PolicyRule] = []
    merged: dict[str, Any] = {}
    for link_name, link in chain:
        rules.extend(_rules_of(link_name, link))
        for key, value in link.items():
            if key not in ("rules", "extends"):
                merged.setdefault(key, value)  # the nearest policy that sets a field wins
    price = merged.get("max_price_per_request_usd")
    providers = merged.get("allowed_providers")
    default = merged.get("default")
    return EffectivePolicy(
        name=name,
        lineage=tuple(link_name for link_name, _ in chain),
        rules=tuple(rules),
        default=_target(default) if default is not None else None,
        applies_to=merged.get("applies_to", AppliesTo.AUTO),
        max_price_micros=_price_micros(price) if price is not None else None,
        allowed_providers=frozenset(providers) if providers is not None else None,
        prefer_byok=bool(merged.get("prefer_byok", False)),
        latency_budget_ms=merged.get("latency_budget_ms"),
    )


def policy_check_providers(
    *,
    document: Mapping[str, Any],
    effective: EffectivePolicy,
    catalog: PolicyCatalog,
    lines: Mapping[str, int] | None = None,
) -> None:
    """Refuse a document whose own rules name a model that its (effective) ``allowed_providers``
    excludes: such a rule could never be used. Inherited rules are filtered per request instead,
    since a child may narrow what its parent allows."""
    if effective.allowed_providers is None:
        return
    checker = _Checker(catalog=catalog, lines=lines or {})
    targets: list[tuple[str, Mapping[str, Any]]] = [
        (_child("rules", index), rule) for index, rule in enumerate(document.get("rules", ()))
    ]
    if "default" in document:
        targets.append(("default", document["default"]))
    for path, target in targets:
        names = [("model", target["model"])] + [
            (f"fallbacks[{index}]", name) for index, name in enumerate(target.get("fallbacks", ()))
        ]
        for key, name in names:
            model = catalog.resolve(name)
            if model is not None and model.provider not in effective.allowed_providers:
                checker.add(
                    f"{path}.{key}",
                    f"{name!r} is served by {model.provider}, which allowed_providers excludes",
                )
    if checker.issues:
        raise PolicyInvalid(checker.issues[:ISSUES_REPORTED_MAX])


# --- evaluation ---------------------------------------------------------------------------------
class ClassificationLike(Protocol):
    """What evaluation reads of the auto-router's classification."""

    @property
    def category(self) -> str: ...

    @property
    def complexity(self) -> str: ...


@dataclass(frozen=True)
class ExcludedModel:
    model: str
    reason: str


@dataclass(frozen=True)
class PolicyDecision:
    """What a policy says about one request.

    ``model`` is a catalog id, ``"auto"`` (the auto-router picks, within ``allowed_providers``,
    ``max_price_micros`` and ``prefer_byok``), or ``None`` when every model of the chain was
    excluded (the caller answers with an error naming ``reason``). ``rule_index`` is the
    position of the matching rule in the effective policy (its own rules first, then inherited
    ones); ``None`` when the default or the requested model was used.
    """

    policy: str
    model: str | None
    fallbacks: tuple[str, ...]
    rule_index: int | None
    rule: str | None
    reason: str
    max_price_micros: int | None
    allowed_providers: frozenset[str] | None
    prefer_byok: bool
    latency_budget_ms: int | None
    excluded: tuple[ExcludedModel, ...] = ()

    @property
    def chain(self) -> tuple[str, ...]:
        return (self.model, *self.fallbacks) if self.model is not None else ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "model": self.model,
            "fallbacks": list(self.fallbacks),
            "chain": list(self.chain),
            "rule_index": self.rule_index,
            "rule": self.rule,
            "reason": self.reason,
            "max_price_micros": self.max_price_micros,
            "allowed_providers": (
                sorted(self.allowed_providers) if self.allowed_providers is not None else None
            ),
            "prefer_byok": self.prefer_byok,
            "latency_budget_ms": self.latency_budget_ms,
            "excluded": [{"model": e.model, "reason": e.reason} for e in self.excluded],
        }


def _canonical(name: str, catalog: PolicyCatalog) -> str:
    if name == AUTO:
        return AUTO
    model = catalog.resolve(name)
    return model.id if model is not None else name


def _rule_matches(
    rule: PolicyRule,
    *,
    classification: ClassificationLike | None,
    requested: str,
    catalog: PolicyCatalog,
) -> bool:
    if rule.categories is not None and (
        classification is None or classification.category not in rule.categories
    ):
        return False
    if rule.complexities is not None and (
        classification is None or classification.complexity not in rule.complexities
    ):
        return False
    if rule.requested_models is not None:
        wanted = {_canonical(name, catalog) for name in rule.requested_models}
        if requested not in wanted:
            return False
    return True


def _usd(micros: int) -> str:
    return f"${Decimal(micros) / MICROS_PER_USD:f}"


def policy_route(
    *,
    policy: EffectivePolicy,
    classification: ClassificationLike | None,
    requested_model: str,
    catalog: PolicyCatalog,
    prompt_tokens: int = 0,
    max_tokens: int | None = None,
    byok_providers: Collection[str] = (),
) -> PolicyDecision:
    """Apply ``policy`` to one request (pure; no I/O).

    1. With ``applies_to: auto`` (the default) a request naming a model keeps it; otherwise the
       first rule whose ``when`` matches (category, complexity, requested model; a missing
       condition matches anything) gives the model and fallbacks, else ``default``, else the
       requested model.
    2. The chain is filtered: models no longer in the catalog, served by a provider outside
       ``allowed_providers``, or whose worst case (``prompt_tokens`` plus ``max_tokens`` or the
       model's default, as reserved) exceeds ``max_price_per_request_usd`` are dropped, with the
       reason in ``excluded``.
    3. With ``prefer_byok``, models whose provider is in ``byok_providers`` (the org has its own
       key) move to the front, keeping their relative order.

    ``classification`` may be ``None`` (not computed): rules on category or complexity then do
    not match.
    """
    requested = _canonical(requested_model, catalog)
    target: PolicyTarget
    rule_index: int | None = None
    rule_label: str | None = None
    if policy.applies_to == AppliesTo.AUTO and requested != AUTO:
        target = PolicyTarget(model=requested)
        reason = "the request names a model and the policy routes only 'auto' requests"
    else:
        for index, rule in enumerate(policy.rules):
            if _rule_matches(
                rule, classification=classification, requested=requested, catalog=catalog
            ):
                target = PolicyTarget(model=rule.model, fallbacks=rule.fallbacks)
                rule_index, rule_label = index, rule.label
                reason = f"matched {rule.label}"
                break
        else:
            if policy.default is not None:
                target = policy.default
                reason = "no rule matched; the policy's default"
            else:
                target = PolicyTarget(model=requested)
                reason = "no rule matched and the policy has no default; the requested model"

    excluded: list[ExcludedModel] = []
    chain: list[str] = []
    if target.model == AUTO:
        chain = [AUTO]
    else:
        for name in (target.model, *target.fallbacks):
            model = catalog.resolve(name)
            if model is None:
                excluded.append(ExcludedModel(name, "not in the catalog (or disabled)"))
                continue
            if model.id in chain:
                continue
            if (
                policy.allowed_providers is not None
                and model.provider not in policy.allowed_providers
            ):
                excluded.append(
                    ExcludedModel(model.id, f"{model.provider} is not an allowed provider")
                )
                continue
            if policy.max_price_micros is not None:
                worst = reservation_micros(
                    model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens
                )
                if worst > policy.max_price_micros:
                    excluded.append(
                        ExcludedModel(
                            model.id,
                            f"may cost up to {_usd(worst)}, over the "
                            f"{_usd(policy.max_price_micros)} per-request maximum",
                        )
                    )
                    continue
            chain.append(model.id)
        if policy.prefer_byok and byok_providers:
            own = set(byok_providers)
            chain.sort(key=lambda model_id: catalog.models[model_id].provider not in own)
    if not chain:
        reason = f"{reason}; every model of the chain was excluded"
    return PolicyDecision(
        policy=policy.name,
        model=chain[0] if chain else None,
        fallbacks=tuple(chain[1:]),
        rule_index=rule_index,
        rule=rule_label,
        reason=reason,
        max_price_micros=policy.max_price_micros,
        allowed_providers=policy.allowed_providers,
        prefer_byok=policy.prefer_byok,
        latency_budget_ms=policy.latency_budget_ms,
        excluded=tuple(excluded),
    )
