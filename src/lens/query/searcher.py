"""The one entry point for search: parse, pick shards, run a mode, page the results.

The CLI, the HTTP API and Mimir all call :meth:`Searcher.search`, so every
surface answers a query the same way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lens.errors import BadRequest
from lens.index.catalog import Catalog
from lens.index.embedder import Embedder, FloatArray
from lens.query.ast import Query, Term, positive_terms
from lens.query.exact import (
    Deadline,
    ExactPlan,
    ExactState,
    estimate_candidates,
    finish,
    reading_order,
    search_snapshot,
)
from lens.query.matchers import compile_pattern
from lens.query.parser import parse_query
from lens.query.ranked import Candidate, FileLines, chunk_hit, ranked_candidates, ranked_tokens
from lens.query.results import MODES, Hit, Mode, SearchResult, decode_cursor, encode_cursor, query_fingerprint
from lens.query.semantic import VectorTable, semantic_candidates, semantic_status, vector_table
from lens.query.shards import ShardSet, ShardView, Snapshot

MAX_LIMIT = 1000
MAX_CONTEXT = 20
MAX_TIMEOUT_MS = 60_000
RRF_K = 60


class Searcher:
    def __init__(
        self,
        catalog: Catalog,
        embedder_factory: Callable[[], Embedder] | None = None,
        *,
        max_query_length: int = 4096,
    ) -> None:
        self.catalog = catalog
        self.max_query_length = max_query_length
        self.shards = ShardSet(catalog)
        self._embedder_factory = embedder_factory
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def embedder(self) -> Embedder | None:
        if self._embedder is None and self._embedder_factory is not None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._embedder_factory()
        return self._embedder

    def _views(self, query: Query, repos: list[str] | None) -> list[ShardView]:
        names = self.catalog.names()
        if repos:
            missing = [r for r in repos if r not in names]
            if missing:
                raise BadRequest(f"unknown repository: {', '.join(missing)}", details={"repos": missing})
            names = [n for n in names if n in repos]
        if query.filters.repos:
            preds = [compile_pattern(p, query.filters.case, path_like=False) for p in query.filters.repos]
            names = [n for n in names if any(p(n) for p in preds)]
        return [self.shards.view(n) for n in names]

    def search(
        self,
        text: str,
        *,
        mode: str = "exact",
        limit: int = 100,
        context: int = 0,
        cursor: str | None = None,
        timeout_ms: int = 5000,
        repos: list[str] | None = None,
    ) -> SearchResult:
        started = time.perf_counter()
        if mode not in MODES:
            raise BadRequest(f"unknown mode {mode!r}: use one of {', '.join(MODES)}", details={"mode": mode})
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", details={"limit": limit})
        if not 0 <= context <= MAX_CONTEXT:
            raise BadRequest(f"context must be between 0 and {MAX_CONTEXT}", details={"context": context})
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise BadRequest(
                f"timeout_ms must be between 1 and {MAX_TIMEOUT_MS}", details={"timeout_ms": timeout_ms}
            )
        query = parse_query(text, max_length=self.max_query_length)
        fingerprint = query_fingerprint(text, mode, repos)
        offset, ordering = decode_cursor(cursor, fingerprint) if cursor else (0, None)
        plan = ExactPlan(query, context)
        views = self._views(query, repos)
        deadline = Deadline(timeout_ms)
        typed_mode: Mode = mode
        if typed_mode == "exact":
            result = self._exact(plan, views, offset, limit, deadline, ordering)
        else:
            result = self._scored(typed_mode, plan, views, offset, limit, deadline)
        result.query = text
        result.mode = typed_mode
        if result.next_cursor is not None and result.next_cursor in ("", "global", "stream"):
            result.next_cursor = encode_cursor(offset + limit, fingerprint, result.next_cursor or "global")
        result.took_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    def _exact(
        self,
        plan: ExactPlan,
        views: list[ShardView],
        offset: int,
        limit: int,
        deadline: Deadline,
        ordering: str | None,
    ) -> SearchResult:
        state = ExactState(want=offset + limit + 1)
        candidates = 0
        scanned_candidates_known = True
        with ExitStack() as stack:
            snaps = [stack.enter_context(view.snapshot()) for view in views]
            for snap in reading_order(snaps, plan):
                if not state.full and not state.timed_out:
                    search_snapshot(snap, plan, state, deadline)
                if not state.exhausted and plan.query.filters.type == "line" and not state.timed_out:
                    candidates += estimate_candidates(snap, plan)
                elif not state.exhausted:
                    scanned_candidates_known = False
        # The first page picks the ordering; later pages keep it (see exact.finish).
        chosen = ordering or ("global" if state.exhausted else "stream")
        page, more = finish(state, offset, limit, chosen)
        exact_total = state.exhausted and not state.timed_out
        if exact_total:
            total = len(state.lines)
        elif scanned_candidates_known and state.candidates:
            per_file = state.lines_per_file()
            total = max(state.matched_lines, round(per_file * max(candidates, state.candidates)))
        else:
            total = len(state.lines)
        return SearchResult(
            query="",
            mode="exact",
            results=page,
            total=total,
            total_is_estimate=not exact_total,
            truncated=more,
            timed_out=state.timed_out,
            next_cursor=chosen if more else None,
            took_ms=0.0,
            stats={"files_scanned": state.files_scanned, "shards": len(views), "ordering": chosen},
        )

    def _scored(
        self, mode: Mode, plan: ExactPlan, views: list[ShardView], offset: int, limit: int, deadline: Deadline
    ) -> SearchResult:
        """Ranked, semantic and hybrid modes, in two passes over the shards, each shard on its own thread.

        Pass 1 scores each shard and keeps its best ``offset + limit + 1`` candidates (chunk spans with
        a score, no text yet). Pass 2 reads file content only for the candidates that can land on the
        requested page, from the same shard generation. The page is the one a single pass that showed
        every candidate and sorted them by (score desc, repo, path, line) would give.
        """
        want = offset + limit + 1
        tokens = ranked_tokens(plan)
        query_text = " ".join(
            t.text if isinstance(t, Term) else t.pattern for t in positive_terms(plan.query.expr)
        )
        embedder = self.embedder() if mode in ("semantic", "hybrid") else None
        if mode in ("semantic", "hybrid") and embedder is None:
            raise BadRequest("semantic search is not configured on this server", details={"mode": mode})
        if mode == "ranked" and not tokens:
            raise BadRequest(
                "ranked mode needs at least one word to rank by", details={"query": plan.query.source}
            )
        query_vec = _QueryVector(embedder, query_text) if embedder is not None else None

        def collect(view: ShardView, eager: bool) -> _ShardPart:
            if deadline.expired():
                return _ShardPart(view, None, [], None, timed_out=True)
            with view.snapshot() as snap:
                status = None
                table = None
                if embedder is not None:
                    status = semantic_status(snap, embedder.model_id, embedder.dim)
                    table = vector_table(snap, embedder.dim)
                    if table.embedded == 0 or table.model != embedder.model_id:
                        table = None
                items: list[_Pending]
                if mode == "ranked":
                    items = list(ranked_candidates(snap, plan, tokens, want))
                elif mode == "semantic":
                    assert query_vec is not None
                    found_sem = semantic_candidates(snap, plan, table, query_vec.get(), want) if table else []
                    items = list(found_sem)
                else:
                    items = list(_hybrid_candidates(snap, plan, table, query_vec, tokens, want))
                if eager:  # show every candidate in this snapshot; pass 2 then has nothing to read
                    lines = FileLines(snap)
                    items = [_Shown(it.materialize(lines, plan.context)) for it in items]
                    lines.detach()
                    return _ShardPart(view, (snap.shard, snap.generation), items, status, shown=lines)
                return _ShardPart(view, (snap.shard, snap.generation), items, status)

        for attempt in range(_PASS_ATTEMPTS):
            # A shard that changed between the passes (an update committed) makes the whole search
            # start again; the last attempt shows every candidate in pass 1's snapshot instead.
            eager = attempt == _PASS_ATTEMPTS - 1
            parts = _each(partial(collect, eager=eager), views)
            found = sum(len(p.items) for p in parts)
            selected, above = _select(parts, offset, limit)
            # Pass 2 reads the files of the page's candidates on the shard threads (SQLite runs
            # without the GIL), then shows the hits here: that part is Python, and threads would
            # only pass the GIL back and forth.
            fetched = _each(_fetch, selected)
            if all(lines is not None for lines in fetched):
                break
        hits = [
            item.materialize(lines, plan.context)
            for (_part, items), lines in zip(selected, fetched, strict=True)
            if lines is not None
            for item in items
        ]

        sem_status: dict[str, Any] | None = None
        warnings: list[str] = []
        timed_out = any(part.timed_out for part in parts)
        for part in parts:
            if part.status is not None:
                sem_status = _merge_status(sem_status, part.status)
        if sem_status is not None and sem_status["status"] != "ready":
            warnings.append(
                f"semantic index is {sem_status['status']}: {sem_status['embedded']} of {sem_status['total']}"
                " chunks embedded; semantic results cover only those"
            )
        hits.sort(key=lambda h: (-h.score, h.repo, h.path, h.line_number))
        page = hits[offset - above : offset - above + limit]
        more = found > offset + limit
        return SearchResult(
            query="",
            mode=mode,
            results=page,
            total=found if not more else found - 1,
            total_is_estimate=more,
            truncated=more,
            timed_out=timed_out,
            next_cursor="" if more else None,
            took_ms=0.0,
            semantic=sem_status,
            stats={"shards": len(views), "tokens": tokens},
            warnings=warnings,
        )


# -- ranked, semantic and hybrid: candidates per shard, then the page -------------------------------

_PASS_ATTEMPTS = 3


class _Pending(Protocol):
    """A scored result whose text is read only if it makes the page."""

    @property
    def score(self) -> float: ...

    def files(self) -> tuple[int, ...]:
        """The files :meth:`materialize` reads."""
        ...

    def materialize(self, lines: FileLines, context: int) -> Hit: ...


@dataclass(frozen=True, slots=True)
class _Shown:
    """A result already shown (its content read in the snapshot it was scored in)."""

    hit: Hit

    @property
    def score(self) -> float:
        return self.hit.score

    def files(self) -> tuple[int, ...]:
        return ()

    def materialize(self, lines: FileLines, context: int) -> Hit:
        return self.hit


@dataclass(slots=True)
class _ShardPart:
    view: ShardView
    key: tuple[Path, int] | None  # (shard file, generation) the candidates were scored in
    items: list[_Pending]
    status: dict[str, Any] | None
    timed_out: bool = False
    shown: FileLines | None = None  # set when the items were shown in pass 1 (_Shown)


_Selection = list[tuple["_ShardPart", list[_Pending]]]


def _select(parts: list[_ShardPart], offset: int, limit: int) -> tuple[_Selection, int]:
    """The candidates that can land on the page, per shard, and how many rank above all of them.

    The page is positions ``offset .. offset+limit-1`` of every candidate sorted by score (ties are
    ordered later by repo, path and line, which needs the text), so it holds exactly the candidates
    scored between the scores at those two positions, ties included.
    """
    scores = sorted((it.score for p in parts for it in p.items), reverse=True)
    if offset >= len(scores):
        return [], 0
    hi = scores[offset]
    lo = scores[min(offset + limit, len(scores)) - 1]
    above = sum(1 for sc in scores[:offset] if sc > hi)
    selected = []
    for part in parts:
        chosen = [it for it in part.items if lo <= it.score <= hi]
        if chosen:
            selected.append((part, chosen))
    return selected, above


def _fetch(task: tuple[_ShardPart, list[_Pending]]) -> FileLines | None:
    """The files ``items`` show, read from the shard generation they were scored in; None if the
    shard has changed since."""
    part, items = task
    if part.shown is not None:
        return part.shown
    with part.view.snapshot() as snap:
        if (snap.shard, snap.generation) != part.key:
            return None
        lines = FileLines(snap)
        lines.prefetch(file_id for it in items for file_id in it.files())
    lines.detach()
    return lines


class _QueryVector:
    """The query's embedding, computed once per search by whichever shard needs it first."""

    def __init__(self, embedder: Embedder, text: str) -> None:
        self._embedder = embedder
        self._text = text
        self._lock = threading.Lock()
        self._vec: FloatArray | None = None

    def get(self) -> FloatArray:
        with self._lock:
            if self._vec is None:
                self._vec = self._embedder.embed_query(self._text)
            return self._vec


_T = TypeVar("_T")
_R = TypeVar("_R")
_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _shard_pool() -> ThreadPoolExecutor:
    """Threads shared by all searches of the process (one per CPU, at least 2): SQLite's FTS5
    scoring and numpy's matrix product release the GIL, so shards are scored in parallel."""
    global _pool
    pid = os.getpid()
    if _pool is None or _pool[0] != pid:  # a forked child inherits the object but not its threads
        with _pool_lock:
            if _pool is None or _pool[0] != pid:
                try:
                    cpus = len(os.sched_getaffinity(0))
                except AttributeError:  # not on Linux
                    cpus = os.cpu_count() or 1
                _pool = (pid, ThreadPoolExecutor(max_workers=max(2, cpus), thread_name_prefix="lens-shard"))
    return _pool[1]


def _each(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``fn`` over ``items``, results in order: the first on this thread, the others on the shard
    pool (so a search always makes progress, even when other searches keep the pool busy)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    futures = [_shard_pool().submit(fn, x) for x in items[1:]]
    try:
        first = fn(items[0])
    except BaseException:
        wait(futures)  # never return while a task still reads a shard for this search
        raise
    return [first, *(f.result() for f in futures)]


def _merge_status(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return dict(b)
    embedded = a["embedded"] + b["embedded"]
    total = a["total"] + b["total"]
    statuses = {a["status"], b["status"]}
    status = next((s for s in ("stale_model", "pending") if s in statuses), "ready" if total else "empty")
    return {"status": status, "embedded": embedded, "total": total, "model": a.get("model") or b.get("model")}


# Two lookups, each on its own index (symbols_name_nocase, symbols_flat): an OR of the two conditions
# scanned every symbol of the shard, once per query word (~0.5 s per hybrid query on go-std + jdk).
SYMBOL_LOOKUP = (
    "SELECT file_id, line, name, kind, container FROM symbols WHERE name = ? COLLATE NOCASE"
    " UNION SELECT file_id, line, name, kind, container FROM symbols"
    " WHERE replace(name, '_', '') = ? COLLATE NOCASE ORDER BY file_id, line LIMIT ?"
)


def _symbol_hits(snap: Snapshot, plan: ExactPlan, tokens: list[str], want: int) -> list[Hit]:
    """Definitions named like a query term or like the query's tokens joined (get_user -> getuser)."""
    names = {t.text for t in positive_terms(plan.query.expr) if isinstance(t, Term)}
    if len(tokens) > 1:
        names.add("".join(tokens))
    out: list[tuple[int, str, int, Hit]] = []
    for name in sorted(names):
        rows = snap.conn.execute(SYMBOL_LOOKUP, (name, name, want)).fetchall()
        for file_id, line, sym_name, kind, container in rows:
            info = snap.files.get(file_id)
            if info is None or not plan.path_filter.accepts(info.path, info.lang):
                continue
            chunk = snap.conn.execute(
                "SELECT start_line, end_line, kind, name FROM chunks WHERE file_id = ? AND start_line <= ?"
                " AND end_line >= ? ORDER BY end_line - start_line LIMIT 1",
                (file_id, line, line),
            ).fetchone()
            start, end = (chunk[0], chunk[1]) if chunk else (line, line)
            hit = chunk_hit(snap, file_id, start, end, kind, sym_name, 1.0, tokens, "symbol", plan.context)
            hit.symbol = {"name": sym_name, "kind": kind, "container": container}
            out.append((info.rank_class, hit.path, hit.line_number, hit))
    out.sort(key=lambda t: t[:3])
    return [t[3] for t in out[:want]]


@dataclass(slots=True)
class _Fused:
    """One chunk span in hybrid mode: its reciprocal-rank-fusion score over the signals that found it."""

    base: Candidate | Hit  # the first signal's result for the span
    score: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)
    symbol_hit: Hit | None = None  # a later symbol hit on the span: its line and symbol are shown

    def files(self) -> tuple[int, ...]:
        return () if isinstance(self.base, Hit) else self.base.files()

    def materialize(self, lines: FileLines, context: int) -> Hit:
        hit = self.base if isinstance(self.base, Hit) else self.base.materialize(lines, context)
        if self.symbol_hit is not None:
            sym = self.symbol_hit
            hit.line_number, hit.line, hit.ranges = sym.line_number, sym.line, sym.ranges
            hit.symbol = sym.symbol
        hit.signals = self.signals
        hit.why = self.why
        hit.score = self.score
        return hit


def _hybrid_candidates(
    snap: Snapshot,
    plan: ExactPlan,
    table: VectorTable | None,
    query_vec: _QueryVector | None,
    tokens: list[str],
    want: int,
) -> list[_Fused]:
    """Reciprocal rank fusion of ranked, semantic and symbol hits, keyed by chunk span."""
    depth = max(want, 50)
    lists: dict[str, Sequence[Candidate | Hit]] = {
        "bm25": ranked_candidates(snap, plan, tokens, depth) if tokens else [],
        "semantic": (
            semantic_candidates(snap, plan, table, query_vec.get(), depth)
            if table is not None and query_vec is not None
            else []
        ),
        "symbol": _symbol_hits(snap, plan, tokens, depth),
    }
    fused: dict[tuple[str, int, int], _Fused] = {}
    for signal, items in lists.items():
        for rank, item in enumerate(items):
            if isinstance(item, Hit):
                key = (item.path, item.start_line or item.line_number, item.end_line or item.line_number)
            else:
                key = (snap.files[item.file_id].path, item.start, item.end)
            cur = fused.get(key)
            if cur is None:
                cur = fused[key] = _Fused(item)
            elif signal == "symbol":
                assert isinstance(item, Hit)
                cur.symbol_hit = item
            cur.signals[signal] = round(item.score, 6)
            cur.why.append(signal)
            cur.score += 1.0 / (RRF_K + rank + 1)
    return list(fused.values())
