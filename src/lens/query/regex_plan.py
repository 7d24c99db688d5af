"""Turn a query into a trigram prefilter for the shard's FTS5 index.

The prefilter only narrows which files are read; every candidate is verified,
so a prefilter may admit too much but must never exclude a file that matches.
When in doubt (short literals, regex syntax Python's parser reads differently
from RE2), it returns ``None``: scan every file.

Regexes are read the way Russ Cox's codesearch reads them: small alternations and
character classes expand into the set of exact strings they can match
(``func (Read|Write)Byte`` -> ``func ReadByte`` or ``func WriteByte``), so the trigrams that span
a group's boundary filter too. Each literal then contributes its rarest trigrams,
chosen with the shard's per-trigram document counts when they are known.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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
    kept = list(dict.fromkeys(i for i in items if i is not None))
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


# An exact set lists every string a piece of regex can match; past these sizes it is given up.
_MAX_EXACT = 32
_MAX_CLASS = 8
_MAX_EXACT_REPEAT = 3

_Item = tuple[Any, Any]


def _exact_seq(items: list[_Item]) -> frozenset[str] | None:
    out: frozenset[str] = frozenset({""})
    for op, av in items:
        ex = _exact(op, av)
        if ex is None or len(out) * len(ex) > _MAX_EXACT:
            return None
        out = frozenset(a + b for a in out for b in ex)
    return out


def _exact(op: Any, av: Any) -> frozenset[str] | None:
    """Every string the regex item ``(op, av)`` can match, when that set is small; else None."""
    name = str(op)
    if name == "LITERAL":
        return frozenset({chr(av)})
    if name == "AT":
        return frozenset({""})  # anchors consume nothing
    if name == "SUBPATTERN":
        return _exact_seq(list(av[-1]))
    if name == "ATOMIC_GROUP":
        return _exact_seq(list(av))
    if name == "BRANCH":
        alts = [_exact_seq(list(alt)) for alt in av[1]]
        if any(a is None for a in alts):
            return None
        union = frozenset(s for a in alts if a is not None for s in a)
        return union if len(union) <= _MAX_EXACT else None
    if name == "IN":
        chars: set[str] = set()
        for iop, iav in av:
            iname = str(iop)
            if iname == "LITERAL":
                chars.add(chr(iav))
            elif iname == "RANGE" and iav[1] - iav[0] < _MAX_CLASS:
                chars.update(chr(c) for c in range(iav[0], iav[1] + 1))
            else:  # NEGATE, CATEGORY (\w, \d, ...), big ranges
                return None
            if len(chars) > _MAX_CLASS:
                return None
        return frozenset(chars)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        lo, hi, sub = av
        ex = _exact_seq(list(sub))
        if ex is None:
            return None
        if (lo, hi) == (0, 1):
            return ex | {""}
        if lo == hi and lo <= _MAX_EXACT_REPEAT and len(ex) ** lo <= _MAX_EXACT:
            out: frozenset[str] = frozenset({""})
            for _ in range(lo):
                out = frozenset(a + b for a in out for b in ex)
            return out
    return None


def _inexact(op: Any, av: Any) -> Req | None:
    """What a regex item without a small exact set requires of every match."""
    name = str(op)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        lo, _hi, sub = av
        return _seq(list(sub)) if lo >= 1 else None
    if name == "SUBPATTERN":
        return _seq(list(av[-1]))
    if name == "ATOMIC_GROUP":
        return _seq(list(av))
    if name == "BRANCH":
        return _any([_seq(list(alt)) for alt in av[1]])
    if name in ("ANY", "IN", "NOT_LITERAL", "CATEGORY"):
        return None
    raise _Unsupported(name)


def _seq(items: list[_Item]) -> Req | None:
    """Requirements of a concatenation: runs of exact items become a set of literals, one of
    which every match contains; an item without an exact set cuts the run."""
    reqs: list[Req | None] = []
    run: frozenset[str] = frozenset({""})

    def cut() -> None:
        nonlocal run
        if run != {""}:
            # A match containing "abcd" contains "abc": only the minimal strings matter.
            minimal = [s for s in sorted(run) if not any(o != s and o in s for o in run)]
            reqs.append(_any([_literal(s) for s in minimal]))
        run = frozenset({""})

    for op, av in items:
        ex = _exact(op, av)
        if ex is not None:
            if len(run) * len(ex) > _MAX_EXACT:
                cut()
            run = frozenset(a + b for a in run for b in ex)
            continue
        cut()
        reqs.append(_inexact(op, av))
    cut()
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


TrigramCount = Callable[[str], int]
"""Documents of a shard that contain a trigram (case-folded, as FTS5 stores it)."""


def _trigrams(text: str) -> list[str]:
    """The literal's distinct trigrams (case-insensitively, as the index folds case), in order."""
    seen: dict[str, str] = {}
    for i in range(len(text) - 2):
        gram = text[i : i + 3]
        seen.setdefault(gram.lower(), gram)
    return list(seen.values())


def choose_trigrams(text: str, count: TrigramCount | None = None) -> list[str]:
    """The trigrams of ``text`` to AND in the prefilter.

    With document counts: the rarest ``_MAX_TRIGRAMS_PER_LITERAL`` (a trigram no file has is
    enough on its own). Every subset is sound, and the rare ones do the filtering while the common
    ones only add doclist reads. Without counts: up to that many, evenly spaced over the literal.
    """
    grams = _trigrams(text)
    if count is not None:
        ranked = sorted(range(len(grams)), key=lambda i: (count(grams[i].lower()), i))
        if ranked and count(grams[ranked[0]].lower()) == 0:
            return [grams[ranked[0]]]
        return [grams[i] for i in sorted(ranked[:_MAX_TRIGRAMS_PER_LITERAL])]
    if len(grams) <= _MAX_TRIGRAMS_PER_LITERAL:
        return grams
    step = (len(grams) - 1) / (_MAX_TRIGRAMS_PER_LITERAL - 1)
    return list(dict.fromkeys(grams[round(i * step)] for i in range(_MAX_TRIGRAMS_PER_LITERAL)))


def _quote(gram: str) -> str:
    return '"' + gram.replace('"', '""') + '"'


def to_fts(req: Req, count: TrigramCount | None = None) -> str:
    """FTS5 MATCH syntax: each literal becomes an AND of its (rarest) trigrams."""
    if isinstance(req, Lit):
        return " AND ".join(_quote(g) for g in choose_trigrams(req.text, count))
    if isinstance(req, AllOf):
        return " AND ".join(f"({to_fts(i, count)})" for i in req.items)
    return " OR ".join(f"({to_fts(i, count)})" for i in req.items)


def estimate_files(req: Req, count: TrigramCount, files: int) -> int:
    """An upper bound on the files :func:`to_fts` admits: a literal's rarest trigram's count."""
    if isinstance(req, Lit):
        return min((count(g.lower()) for g in choose_trigrams(req.text, count)), default=files)
    if isinstance(req, AllOf):
        return min(estimate_files(i, count, files) for i in req.items)
    return min(files, sum(estimate_files(i, count, files) for i in req.items))
