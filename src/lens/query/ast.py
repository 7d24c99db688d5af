"""The parsed form of a Lens query.

The parser (``lens.query.parser``) produces a :class:`Query`; every engine
(exact, ranked, semantic, hybrid) and the brute-force reference read it.
Content terms form a boolean tree; filters are global (implicitly AND-ed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal as TypingLiteral


@dataclass(frozen=True)
class Term:
    """A literal string (``quoted`` keeps spaces) searched as a substring."""

    text: str
    pos: int
    quoted: bool = False


@dataclass(frozen=True)
class Regex:
    """``/pattern/``: an RE2 regular expression, matched within one line."""

    pattern: str
    pos: int


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


Node = Term | Regex | And | Or | Not

PatternKind = TypingLiteral["substring", "glob", "regex", "exact"]


@dataclass(frozen=True)
class Pattern:
    """A filter value: ``/re/`` is a regex, a value with ``*``/``?`` a glob, else ``default_kind``."""

    kind: PatternKind
    value: str


CaseMode = TypingLiteral["yes", "no", "auto"]
ResultType = TypingLiteral["line", "file"]


@dataclass(frozen=True)
class Filters:
    repos: tuple[Pattern, ...] = ()  # any may match (OR); substring by default
    paths: tuple[Pattern, ...] = ()  # any may match (OR); substring by default
    exclude_paths: tuple[Pattern, ...] = ()  # none may match
    langs: tuple[str, ...] = ()  # canonical language ids (OR)
    exclude_langs: tuple[str, ...] = ()
    syms: tuple[Pattern, ...] = ()  # symbol-definition names (OR); exact by default
    case: CaseMode = "auto"
    type: ResultType = "line"


@dataclass(frozen=True)
class Query:
    expr: Node | None
    filters: Filters = field(default_factory=Filters)
    source: str = ""


def positive_terms(node: Node | None) -> list[Term | Regex]:
    """Terms not under a NOT: the ones whose matching lines are returned."""
    out: list[Term | Regex] = []

    def walk(n: Node, negated: bool) -> None:
        if isinstance(n, Term | Regex):
            if not negated:
                out.append(n)
        elif isinstance(n, And | Or):
            for c in n.children:
                walk(c, negated)
        else:
            walk(n.child, not negated)

    if node is not None:
        walk(node, False)
    return out


def has_upper(query: Query) -> bool:
    """Smart case: any uppercase letter in a positive term or regex makes the query case-sensitive."""
    for t in positive_terms(query.expr):
        # In a regex, escapes like \W or \S are syntax, not letters the user typed.
        text = t.text if isinstance(t, Term) else re.sub(r"\\.", "", t.pattern)
        if any(ch.isupper() for ch in text):
            return True
    return any(ch.isupper() for p in query.filters.syms for ch in p.value)


def case_sensitive(query: Query) -> bool:
    if query.filters.case == "yes":
        return True
    if query.filters.case == "no":
        return False
    return has_upper(query)
