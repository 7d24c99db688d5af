"""Turn a query into a trigram prefilter for the shard's FTS5 index.

The prefilter only narrows which files are read; every candidate is verified,
so a prefilter may admit too much but must never exclude a file that matches.
When in doubt (short literals, regex syntax Python's parser reads differently
from RE2), it returns ``None``: scan every file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from lens.query.ast import And, Node, Not, Or, Regex, Term

# Python's own regex parser (``re._parser``, 3.11+) reads RE2's common syntax the same way.
sre_parse: Any = importlib.import_module("re._parser")

_MAX_TRIGRAMS_PER_LITERAL = 8
# RE2 syntax that Python's sre parser would misread; with these we do not prefilter.
_UNSAFE_REGEX_SYNTAX = ("[:", "\\p", "\\P", "\\C", "\\Q", "\\E", "\\z", "\\A", "(?U", "(?s")


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class AllOf:
    items: tuple[Req, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Req, ...]


Req = Lit | AllOf | AnyOf


def _all(items: list[Req | None]) -> Req | None:
    kept = [i for i in items if i is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else AllOf(tuple(kept))


def _any(items: list[Req | None]) -> Req | None:
    if not items or any(i is None for i in items):
        return None
    kept = [i for i in items if i is not None]
    return kept[0] if len(kept) == 1 else AnyOf(tuple(kept))


def _literal(text: str) -> Req | None:
    return Lit(text) if len(text) >= 3 else None


def regex_requirements(pattern: str) -> Req | None:
    """Literal substrings any match of ``pattern`` must contain (None = no constraint)."""
    if any(u in pattern for u in _UNSAFE_REGEX_SYNTAX):
        return None
    try:
        parsed = sre_parse.parse(pattern)
    except Exception:
        return None
    try:
        return _seq(list(parsed))
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _seq(items: list[tuple[Any, Any]]) -> Req | None:
    reqs: list[Req | None] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            reqs.append(_literal("".join(run)))
            run.clear()

    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            run.append(chr(av))
        elif name == "AT":
            continue  # anchors consume nothing: the run stays contiguous
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _hi, sub = av
            flush()
            if lo >= 1:
                reqs.append(_seq(list(sub)))
        elif name == "SUBPATTERN":
            flush()
            reqs.append(_seq(list(av[-1])))
        elif name == "ATOMIC_GROUP":
            flush()
            reqs.append(_seq(list(av)))
        elif name == "BRANCH":
            flush()
            reqs.append(_any([_seq(list(alt)) for alt in av[1]]))
        elif name in ("ANY", "IN", "NOT_LITERAL", "CATEGORY"):
            flush()
        else:
            raise _Unsupported(name)
    flush()
    return _all(reqs)


def node_requirements(node: Node | None) -> Req | None:
    """Prefilter for the boolean content expression (NOT never narrows)."""
    if node is None:
        return None
    if isinstance(node, Term):
        return _literal(node.text)
    if isinstance(node, Regex):
        return regex_requirements(node.pattern)
    if isinstance(node, And):
        return _all([node_requirements(c) for c in node.children])
    if isinstance(node, Or):
        return _any([node_requirements(c) for c in node.children])
    assert isinstance(node, Not)
    return None


def _trigrams(text: str) -> list[str]:
    grams = list(dict.fromkeys(text[i : i + 3] for i in range(len(text) - 2)))
    if len(grams) <= _MAX_TRIGRAMS_PER_LITERAL:
        return grams
    step = (len(grams) - 1) / (_MAX_TRIGRAMS_PER_LITERAL - 1)
    return list(dict.fromkeys(grams[round(i * step)] for i in range(_MAX_TRIGRAMS_PER_LITERAL)))


def _quote(gram: str) -> str:
    return '"' + gram.replace('"', '""') + '"'


def to_fts(req: Req) -> str:
    """FTS5 MATCH syntax: each literal becomes an AND of its trigrams."""
    if isinstance(req, Lit):
        return " AND ".join(_quote(g) for g in _trigrams(req.text))
    if isinstance(req, AllOf):
        return " AND ".join(f"({to_fts(i)})" for i in req.items)
    return " OR ".join(f"({to_fts(i)})" for i in req.items)
