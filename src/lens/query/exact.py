"""Exact mode: literal and regex lines, prefiltered by trigrams, verified on content.

Candidate files stream out of the FTS5 trigram index in file-id order, which is
rank order (normal files, then tests, then vendored/low). Files that define a
symbol named like a search term are read first. Collection stops once the page
is full, so common terms cost about as much as rare ones; the total is then an
estimate and ``truncated`` says more exist. Within the collected window hits
sort by category (symbol definition, whole word, partial), then rank class,
then repository, path and line: a stable order for ties.

Each shard gets its own prefilter: every literal contributes its rarest trigrams
by that shard's document counts. Shards are read in order of how many files they
may match (most first), so a page fills from the shard that has the hits instead
of after verifying another shard's false candidates.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lens.query.ast import Query, Regex, Term, case_sensitive
from lens.query.matchers import (
    ContentPredicate,
    PathFilter,
    TermMatcher,
    compile_pattern,
    is_whole_word,
)
from lens.query.regex_plan import Req, estimate_files, node_requirements, to_fts
from lens.query.results import Hit
from lens.query.shards import FileInfo, Snapshot

CATEGORY_SYMBOL = 0
CATEGORY_WORD = 1
CATEGORY_PARTIAL = 2
_CATEGORY_SCORE = {CATEGORY_SYMBOL: 3.0, CATEGORY_WORD: 2.0, CATEGORY_PARTIAL: 1.0}
_MAX_LINE_CHARS = 2000


class Deadline:
    def __init__(self, timeout_ms: int) -> None:
        self.end = time.monotonic() + max(timeout_ms, 1) / 1000.0

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class TimedOut(Exception):
    pass


@dataclass(order=True)
class _Line:
    sort_key: tuple[int, int, str, str, int]
    hit: Hit = field(compare=False)


@dataclass
class ExactState:
    """Collection state shared across the shards of one query."""

    want: int
    lines: list[_Line] = field(default_factory=list)
    exhausted: bool = True
    timed_out: bool = False
    files_scanned: int = 0
    candidates: int = 0
    # Hit lines found, including those of the last file read that did not fit the window.
    matched_lines: int = 0
    # Files read from the trigram stream (not the symbol-defining files read first) and their hit
    # lines: the unbiased sample a truncated result's total is extrapolated from.
    stream_files: int = 0
    stream_lines: int = 0

    def lines_per_file(self) -> float:
        if self.stream_files:
            return self.stream_lines / self.stream_files
        return self.matched_lines / max(self.files_scanned, 1)

    @property
    def full(self) -> bool:
        return len(self.lines) >= self.want


class ExactPlan:
    """A parsed query compiled once and run against each shard snapshot."""

    def __init__(self, query: Query, context: int) -> None:
        self.query = query
        self.context = context
        f = query.filters
        self.case_sensitive = case_sensitive(query)
        self.predicate = ContentPredicate(query.expr, self.case_sensitive) if query.expr else None
        self.positive: list[TermMatcher] = self.predicate.positive() if self.predicate else []
        self.term_names = [m.node.text for m in self.positive if isinstance(m.node, Term)]
        # One term: a file matches iff the term finds a line in it, so the lines are searched once.
        self.single_term = isinstance(query.expr, Term | Regex)
        self.path_filter = PathFilter(
            include=[compile_pattern(p, f.case, path_like=True) for p in f.paths],
            exclude=[compile_pattern(p, f.case, path_like=True) for p in f.exclude_paths],
            langs=frozenset(f.langs),
            exclude_langs=frozenset(f.exclude_langs),
        )
        self.sym_filters = [compile_pattern(p, f.case, path_like=False) for p in f.syms]
        self.req: Req | None = node_requirements(query.expr)
        self.fts = to_fts(self.req) if self.req is not None else None  # without trigram counts
        self._prefilters: dict[tuple[str, int], tuple[str | None, int]] = {}

    def prefilter(self, snap: Snapshot) -> tuple[str | None, int]:
        """The FTS5 query for ``snap`` (None: every file is a candidate) and an upper bound on the
        files it admits, both from the shard's trigram counts when it has them."""
        key = (str(snap.shard), snap.generation)
        found = self._prefilters.get(key)
        if found is None:
            if self.req is None:
                found = (None, len(snap.files))
            elif not snap.has_trigram_counts:
                found = (self.fts, _count_matches(snap, self.fts))
            else:
                found = (
                    to_fts(self.req, snap.trigram_count),
                    estimate_files(self.req, snap.trigram_count, len(snap.files)),
                )
            self._prefilters[key] = found
        return found

    def name_matches_term(self, name: str) -> bool:
        if self.case_sensitive:
            return name in self.term_names
        folded = name.casefold()
        return any(folded == t.casefold() for t in self.term_names)

    def name_matches_sym(self, name: str) -> bool:
        return any(f(name) for f in self.sym_filters)


def _guard(conn: sqlite3.Connection, deadline: Deadline) -> None:
    conn.set_progress_handler(lambda: 1 if deadline.expired() else 0, 20000)


def _count_matches(snap: Snapshot, fts: str | None) -> int:
    if fts is None:
        return len(snap.files)
    row = snap.conn.execute("SELECT count(*) FROM files_fts WHERE files_fts MATCH ?", (fts,)).fetchone()
    return int(row[0])


def _stream_ids(snap: Snapshot, fts: str | None) -> Iterator[int]:
    if fts is None:
        yield from snap.files.keys()
        return
    for (rowid,) in snap.conn.execute("SELECT rowid FROM files_fts WHERE files_fts MATCH ?", (fts,)):
        yield rowid


def _symbol_first_ids(snap: Snapshot, plan: ExactPlan) -> list[int]:
    if not plan.term_names:
        return []
    sql = "SELECT DISTINCT file_id FROM symbols WHERE name = ?" + (
        "" if plan.case_sensitive else " COLLATE NOCASE"
    )
    ids: set[int] = set()
    for name in plan.term_names:
        ids.update(r[0] for r in snap.conn.execute(sql, (name,)))
    return sorted(ids)


def _term_definitions(
    snap: Snapshot, plan: ExactPlan, file_id: int
) -> dict[int, tuple[str, str, str | None]]:
    """line -> (name, kind, container) of the file's definitions named like a search term."""
    names = plan.term_names
    marks = ", ".join("?" * len(names))
    params: list[object] = [file_id, *names]
    if plan.case_sensitive:
        where = f"name IN ({marks})"
    elif all(n.isascii() for n in names):
        # NOCASE folds ASCII only; a name with other characters may still casefold to a term,
        # so those rows go to the exact check below as well.
        where = f"(name COLLATE NOCASE IN ({marks}) OR name GLOB ?)"
        params.append("*[^\x01-\x7f]*")
    else:
        where = "1"
        params = [file_id]
    rows = snap.conn.execute(
        f"SELECT line, name, kind, container FROM symbols WHERE file_id = ? AND {where} ORDER BY line", params
    ).fetchall()
    return {
        line: (name, kind, container) for line, name, kind, container in rows if plan.name_matches_term(name)
    }


def _decode_line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= _MAX_LINE_CHARS else text[:_MAX_LINE_CHARS]


def _char_ranges(raw: bytes, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    if raw.isascii():
        return [(s, e) for s, e in spans]
    return [
        (len(raw[:s].decode("utf-8", "replace")), len(raw[:e].decode("utf-8", "replace"))) for s, e in spans
    ]


class _FileLines:
    """Line numbering and context for one file's content, computed on demand."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self._split: list[bytes] | None = None
        self._last_off = 0
        self._last_no = 1

    def number(self, offset: int) -> int:
        if offset < self._last_off:
            self._last_off, self._last_no = 0, 1
        self._last_no += self.content.count(b"\n", self._last_off, offset)
        self._last_off = offset
        return self._last_no

    def context(self, line_no: int, n: int) -> tuple[list[str], list[str]]:
        if n <= 0:
            return [], []
        if self._split is None:
            self._split = self.content.split(b"\n")
        lines = self._split
        before = [_decode_line(x) for x in lines[max(0, line_no - 1 - n) : line_no - 1]]
        after = [_decode_line(x) for x in lines[line_no : line_no + n]]
        return before, after


# A hit line before it is shown: (category, line number, line start, line end, spans, why, symbol).
_Pending = tuple[int, int, int, int, list[tuple[int, int]], set[str], tuple[str, str, str | None] | None]


def _file_hits(
    snap: Snapshot,
    plan: ExactPlan,
    info: FileInfo,
    content: bytes,
    sym_lines: dict[int, tuple[str, str, str | None]] | None,
    room: int,
    defines_term: bool,
) -> tuple[list[_Line], int]:
    """The hit lines of one file that passed the predicate, and how many there are.

    Only the first ``room`` lines in window order (category, then line) are shown: the rest
    could never make the page, and showing a line (decoding, ranges, context) costs more
    than finding it.
    """
    pending: list[_Pending] = []
    if sym_lines is not None:
        # sym: filter: the definition lines are the results.
        offsets = _line_offsets_for(content, sorted(sym_lines))
        for line_no, (ls, le) in sorted(offsets.items()):
            name = sym_lines[line_no][0]
            pos = content[ls:le].find(name.encode())
            spans = [(pos, pos + len(name.encode()))] if pos >= 0 else []
            pending.append((CATEGORY_SYMBOL, line_no, ls, le, spans, {"symbol"}, sym_lines[line_no]))
    else:
        merged: dict[int, tuple[int, list[tuple[int, int]], set[str], bool]] = {}
        for m in plan.positive:
            for ls, le, spans in m.lines(content):
                cur = merged.get(ls)
                word = not m.is_regex and any(is_whole_word(content[ls:le], s, e) for s, e in spans)
                if cur is None:
                    merged[ls] = (le, list(spans), {m.why}, word)
                else:
                    cur[1].extend(spans)
                    cur[2].add(m.why)
                    merged[ls] = (le, cur[1], cur[2], cur[3] or word)
        if not merged:
            return [], 0
        # Only files found by _symbol_first_ids define a symbol named like a term.
        defs = _term_definitions(snap, plan, info.id) if plan.term_names and defines_term else {}
        fl_numbers = _FileLines(content)
        for ls in sorted(merged):
            le, spans, why, word = merged[ls]
            line_no = fl_numbers.number(ls)
            symbol = defs.get(line_no)
            if word:
                why = {"word", *(w for w in why if w != "substring")}
            if symbol is not None:
                category = CATEGORY_SYMBOL
                why = {"symbol", *why}
            else:
                category = CATEGORY_WORD if word else CATEGORY_PARTIAL
            pending.append((category, line_no, ls, le, sorted(set(spans)), why, symbol))
    found = len(pending)
    if found > room:
        pending.sort(key=lambda p: (p[0], p[1]))
        del pending[room:]
    fl = _FileLines(content)
    out = [
        _make_line(snap, plan, info, fl, content, line_no, ls, le, spans, why, category, symbol)
        for category, line_no, ls, le, spans, why, symbol in pending
    ]
    return out, found


def _line_offsets_for(content: bytes, line_numbers: list[int]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    wanted = set(line_numbers)
    if not wanted:
        return out
    last = max(wanted)
    ls, no = 0, 1
    while no <= last and ls <= len(content):
        le = content.find(b"\n", ls)
        if le < 0:
            le = len(content)
        if no in wanted:
            out[no] = (ls, le)
        ls, no = le + 1, no + 1
    return out


_WHY_ORDER = {"symbol": 0, "word": 1, "substring": 2, "regex": 3, "path": 4}


def _make_line(
    snap: Snapshot,
    plan: ExactPlan,
    info: FileInfo,
    fl: _FileLines,
    content: bytes,
    line_no: int,
    ls: int,
    le: int,
    spans: list[tuple[int, int]],
    why: set[str],
    category: int,
    symbol: tuple[str, str, str | None] | None,
) -> _Line:
    raw = content[ls:le]
    before, after = fl.context(line_no, plan.context)
    hit = Hit(
        repo=snap.repo,
        path=info.path,
        commit=snap.commit,
        language=info.lang,
        line_number=line_no,
        line=_decode_line(raw),
        ranges=_char_ranges(raw, spans),
        score=_CATEGORY_SCORE[category] - 0.25 * info.rank_class,
        why=sorted(why, key=lambda w: _WHY_ORDER.get(w, 9)),
        before=before,
        after=after,
        symbol=(
            {"name": symbol[0], "kind": symbol[1], "container": symbol[2]} if symbol is not None else None
        ),
    )
    return _Line((category, info.rank_class, snap.repo, info.path, line_no), hit)


def _sym_index(snap: Snapshot, plan: ExactPlan) -> dict[int, dict[int, tuple[str, str, str | None]]]:
    """file id -> line -> symbol, for definitions matching the sym: filters."""
    exact = [p for p in plan.query.filters.syms if p.kind == "exact"]
    rows: list[tuple[int, int, str, str, str | None]] = []
    if len(exact) == len(plan.query.filters.syms):
        for p in exact:
            cs = plan.query.filters.case == "yes" or (
                plan.query.filters.case == "auto" and any(c.isupper() for c in p.value)
            )
            sql = "SELECT file_id, line, name, kind, container FROM symbols WHERE name = ?" + (
                "" if cs else " COLLATE NOCASE"
            )
            rows.extend(snap.conn.execute(sql, (p.value,)))
    else:
        rows = [
            r
            for r in snap.conn.execute("SELECT file_id, line, name, kind, container FROM symbols")
            if plan.name_matches_sym(r[2])
        ]
    out: dict[int, dict[int, tuple[str, str, str | None]]] = {}
    for file_id, line, name, kind, container in rows:
        if plan.name_matches_sym(name):
            out.setdefault(file_id, {})[line] = (name, kind, container)
    return out


def search_snapshot(snap: Snapshot, plan: ExactPlan, state: ExactState, deadline: Deadline) -> None:
    """Collect hits from one shard into ``state`` until the page is full or time runs out."""
    _guard(snap.conn, deadline)
    try:
        _search(snap, plan, state, deadline)
    except sqlite3.OperationalError as exc:
        if "interrupted" not in str(exc):
            raise
        state.timed_out = True
        state.exhausted = False
    except TimedOut:
        state.timed_out = True
        state.exhausted = False
    finally:
        snap.conn.set_progress_handler(None, 0)


def _search(snap: Snapshot, plan: ExactPlan, state: ExactState, deadline: Deadline) -> None:
    if plan.query.filters.type == "file":
        _search_paths(snap, plan, state, deadline)
        return
    sym_index = _sym_index(snap, plan) if plan.sym_filters else None
    first_set: set[int] = set()
    if sym_index is not None:
        order: Iterable[int] = sorted(sym_index)
    else:
        first = _symbol_first_ids(snap, plan)
        first_set = set(first)
        fts = plan.prefilter(snap)[0]
        order = _chain(first, (i for i in _stream_ids(snap, fts) if i not in first_set))
    for file_id in order:
        if state.full:
            state.exhausted = False
            return
        if deadline.expired():
            raise TimedOut
        info = snap.files.get(file_id)
        if info is None or not plan.path_filter.accepts(info.path, info.lang):
            continue
        state.candidates += 1
        content = snap.content(file_id)
        state.files_scanned += 1
        sampled = file_id not in first_set
        state.stream_files += sampled
        sym_lines = sym_index.get(file_id) if sym_index is not None else None
        checked_by_hits = plan.single_term and sym_lines is None
        if plan.predicate is not None and not checked_by_hits and not plan.predicate.evaluate(content):
            continue
        room = state.want - len(state.lines)
        lines, found = _file_hits(snap, plan, info, content, sym_lines, room, not sampled)
        state.lines.extend(lines)
        state.matched_lines += found
        state.stream_lines += found if sampled else 0
        if found > room:  # lines were left out: this is not every hit
            state.exhausted = False


def _chain(first: list[int], rest: Iterator[int]) -> Iterator[int]:
    yield from first
    yield from rest


def _search_paths(snap: Snapshot, plan: ExactPlan, state: ExactState, deadline: Deadline) -> None:
    for info in snap.files.values():
        if state.full:
            state.exhausted = False
            return
        if deadline.expired():
            raise TimedOut
        if not plan.path_filter.accepts(info.path, info.lang):
            continue
        raw = info.path.encode()
        if plan.predicate is not None and not plan.predicate.evaluate(raw):
            continue
        spans = sorted({s for m in plan.positive for s in m.line_spans(raw)})
        hit = Hit(
            repo=snap.repo,
            path=info.path,
            commit=snap.commit,
            language=info.lang,
            line_number=0,
            line="",
            ranges=_char_ranges(raw, spans),
            score=1.0 - 0.25 * info.rank_class,
            why=["path"],
        )
        state.lines.append(_Line((CATEGORY_PARTIAL, info.rank_class, snap.repo, info.path, 0), hit))
        state.matched_lines += 1


def estimate_candidates(snap: Snapshot, plan: ExactPlan) -> int:
    """Candidate files of ``snap`` (an upper bound from trigram counts; no index scan)."""
    return plan.prefilter(snap)[1]


def reading_order(snaps: list[Snapshot], plan: ExactPlan) -> list[Snapshot]:
    """The order to read shards in: most candidate files first, then by repository name.

    The order only decides which hits fill a truncated page first (and it is the same for
    every page of a query, since it depends only on the shards' generations).
    """
    if len(snaps) <= 1 or plan.query.filters.type == "file" or plan.sym_filters:
        return snaps
    return sorted(snaps, key=lambda snap: (-estimate_candidates(snap, plan), snap.repo))


def finish(state: ExactState, offset: int, limit: int, ordering: str) -> tuple[list[Hit], bool]:
    """Order the collected window; return the page and whether more results may exist.

    ``global``: every candidate was read, so all hits sort by category, class, repo, path, line.
    ``stream``: collection stopped early; hits keep reading order (symbol-defining files first,
    then rank order) and sort by category only within a file. A larger window then extends a
    smaller one instead of reshuffling it, which keeps offset cursors exact: no line is repeated
    or skipped across pages.
    """
    if ordering == "global":
        ordered = sorted(state.lines)
    else:
        ordered = []
        i = 0
        lines = state.lines
        while i < len(lines):
            j = i
            key = lines[i].sort_key[2:4]
            while j < len(lines) and lines[j].sort_key[2:4] == key:
                j += 1
            ordered.extend(sorted(lines[i:j]))
            i = j
    page = [ln.hit for ln in ordered[offset : offset + limit]]
    more = len(ordered) > offset + limit or not state.exhausted
    return page, more
