"""Compiled query terms and filters: what decides whether a file, line or path matches.

Content is UTF-8 bytes end to end (no decoding on the hot path); RE2 runs in
linear time, so no query can backtrack catastrophically. A match never crosses a
line: like ripgrep, a line matches iff the term matches within that line alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import re2

from lens.query.ast import And, Node, Or, Pattern, Regex, Term

Span = tuple[int, int]
# (line_start, line_end, spans relative to line_start): byte offsets
LineMatch = tuple[int, int, list[Span]]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 64 << 20


def _compile(pattern: bytes) -> re2._Regexp:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _is_word_byte(b: int) -> bool:
    return b >= 0x80 or b == 0x5F or 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def is_whole_word(line: bytes, start: int, end: int) -> bool:
    """True when the match is not glued to identifier characters on either side."""
    left_ok = start == 0 or not _is_word_byte(line[start - 1]) or not _is_word_byte(line[start])
    right_ok = end >= len(line) or not _is_word_byte(line[end]) or not _is_word_byte(line[end - 1])
    return left_ok and right_ok


# ASCII letters whose Unicode case-folding orbit leaves ASCII: K (KELVIN SIGN), S (LONG S).
_FOLDS_OUTSIDE_ASCII = frozenset(b"kKsS")


class TermMatcher:
    """One literal or regex term, compiled for the query's case mode."""

    def __init__(self, node: Term | Regex, case_sensitive: bool) -> None:
        self.node = node
        self.is_regex = isinstance(node, Regex)
        self.why = "regex" if self.is_regex else "substring"
        flags = "" if case_sensitive else "(?i)"
        # A case-insensitive ASCII literal is found with bytes.find in ASCII-lowered text: RE2's (?i)
        # matches the same bytes, since no ASCII letter folds outside ASCII but K and S (checked per
        # text: their non-ASCII partners cannot occur in ASCII text).
        self.folded: bytes | None = None
        self._folds_always = False
        if isinstance(node, Term):
            self.literal: bytes | None = node.text.encode() if case_sensitive else None
            source = flags + re2.escape(node.text)
            if not case_sensitive and node.text.isascii() and "\n" not in node.text:
                self.folded = node.text.lower().encode()
                self._folds_always = not any(b in _FOLDS_OUTSIDE_ASCII for b in self.folded)
        else:
            self.literal = None
            source = "(?m)" + flags + node.pattern
        self.regex = _compile(source.encode())
        self.matches_empty = self.regex.search(b"") is not None

    def _lowered(self, text: bytes) -> bytes | None:
        """``text`` ASCII-lowered when the folded literal may be searched in it; else None."""
        if self.folded is None or not (self._folds_always or text.isascii()):
            return None
        return text.lower()

    def present(self, content: bytes) -> bool:
        if self.literal is not None:
            return self.literal in content
        if self.folded is not None and (lowered := self._lowered(content)) is not None:
            return self.folded in lowered
        return next(self.lines(content), None) is not None

    @staticmethod
    def _find_all(hay: bytes, lit: bytes) -> list[Span]:
        spans, start = [], 0
        while (pos := hay.find(lit, start)) >= 0:
            spans.append((pos, pos + len(lit)))
            start = pos + max(len(lit), 1)
        return spans

    def line_spans(self, line: bytes) -> list[Span]:
        if self.literal is not None:
            return self._find_all(line, self.literal)
        if self.folded is not None and (lowered := self._lowered(line)) is not None:
            return self._find_all(lowered, self.folded)
        out: list[Span] = []
        for m in self.regex.finditer(line):
            s, e = m.span()
            if e > s or not out or out[-1][1] != s:
                out.append((s, e))
        return [sp for sp in out if sp[1] > sp[0]] or out[:1]

    def lines(self, content: bytes) -> Iterator[LineMatch]:
        """Every line with a match, in order, each once."""
        if self.literal is not None:
            yield from self._literal_lines(content, content, self.literal)
            return
        if self.folded is not None and (lowered := self._lowered(content)) is not None:
            yield from self._literal_lines(content, lowered, self.folded)
            return
        if self.matches_empty:
            yield from self._all_lines(content)
            return
        last_line_start = -1
        for m in self.regex.finditer(content):
            s, e = m.span()
            ls = content.rfind(b"\n", 0, s) + 1
            while True:
                le = content.find(b"\n", ls)
                if le < 0:
                    le = len(content)
                if ls > last_line_start:
                    last_line_start = ls
                    spans = self.line_spans(content[ls:le])
                    if spans:
                        yield ls, le, spans
                if e <= le + 1 or le >= len(content):
                    break
                ls = le + 1

    def _literal_lines(self, content: bytes, hay: bytes, lit: bytes) -> Iterator[LineMatch]:
        """Lines of ``content`` holding ``lit``, searched in ``hay`` (``content`` or its lowered copy:
        the same length, the same newlines)."""
        start = 0
        while (pos := hay.find(lit, start)) >= 0:
            ls = hay.rfind(b"\n", 0, pos) + 1
            le = hay.find(b"\n", pos)
            if le < 0:
                le = len(hay)
            yield ls, le, self._find_all(hay[ls:le], lit)
            start = le + 1

    def _all_lines(self, content: bytes) -> Iterator[LineMatch]:
        ls = 0
        n = len(content)
        while ls < n:
            le = content.find(b"\n", ls)
            if le < 0:
                le = n
            spans = self.line_spans(content[ls:le])
            if spans:
                yield ls, le, spans
            if le >= n:
                break
            ls = le + 1


class ContentPredicate:
    """The boolean expression over terms, evaluated on a whole file (or a path)."""

    def __init__(self, expr: Node, case_sensitive: bool) -> None:
        self.expr = expr
        self.matchers: dict[int, TermMatcher] = {}
        self._build(expr, case_sensitive)

    def _build(self, node: Node, cs: bool) -> None:
        if isinstance(node, Term | Regex):
            self.matchers[id(node)] = TermMatcher(node, cs)
        elif isinstance(node, And | Or):
            for c in node.children:
                self._build(c, cs)
        else:
            self._build(node.child, cs)

    def evaluate(self, content: bytes) -> bool:
        cache: dict[int, bool] = {}

        def ev(node: Node) -> bool:
            if isinstance(node, Term | Regex):
                key = id(node)
                if key not in cache:
                    cache[key] = self.matchers[key].present(content)
                return cache[key]
            if isinstance(node, And):
                return all(ev(c) for c in node.children)
            if isinstance(node, Or):
                return any(ev(c) for c in node.children)
            return not ev(node.child)

        return ev(self.expr)

    def positive(self) -> list[TermMatcher]:
        out: list[TermMatcher] = []

        def walk(n: Node, neg: bool) -> None:
            if isinstance(n, Term | Regex):
                if not neg:
                    out.append(self.matchers[id(n)])
            elif isinstance(n, And | Or):
                for c in n.children:
                    walk(c, neg)
            else:
                walk(n.child, not neg)

        walk(self.expr, False)
        return out


def _glob_to_regex(glob: str) -> str:
    out = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
        i += 1
    return "".join(out)


def pattern_case_sensitive(p: Pattern, mode: str) -> bool:
    if mode == "yes":
        return True
    if mode == "no":
        return False
    return any(ch.isupper() for ch in p.value)


def compile_pattern(p: Pattern, mode: str, *, path_like: bool) -> Callable[[str], bool]:
    """A predicate over a name (path, repo or symbol) for one filter value."""
    cs = pattern_case_sensitive(p, mode)
    flags = "" if cs else "(?i)"
    if p.kind == "regex":
        rx = re2.compile(flags + p.value)
        return lambda s: rx.search(s) is not None
    if p.kind == "glob":
        body = _glob_to_regex(p.value)
        anchored = (r"(?:^|/)" if path_like and not p.value.startswith("/") else "^") + body + "$"
        if path_like and p.value.startswith("/"):
            anchored = "^" + _glob_to_regex(p.value.lstrip("/")) + "$"
        rx2 = re2.compile(flags + anchored)
        return lambda s: rx2.search(s) is not None
    if p.kind == "exact":
        if cs:
            return lambda s: s == p.value
        folded = p.value.casefold()
        return lambda s: s.casefold() == folded
    if cs:
        return lambda s: p.value in s
    folded_sub = p.value.casefold()
    return lambda s: folded_sub in s.casefold()


@dataclass
class PathFilter:
    """The path/lang/repo filters of a query, compiled once."""

    include: list[Callable[[str], bool]]
    exclude: list[Callable[[str], bool]]
    langs: frozenset[str]
    exclude_langs: frozenset[str]

    def accepts(self, path: str, lang: str | None) -> bool:
        if self.langs and lang not in self.langs:
            return False
        if lang is not None and lang in self.exclude_langs:
            return False
        if self.include and not any(f(path) for f in self.include):
            return False
        return not any(f(path) for f in self.exclude)
