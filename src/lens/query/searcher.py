"""The one entry point for search: parse, pick shards, run a mode, page the results.

The CLI, the HTTP API and Mimir all call :meth:`Searcher.search`, so every
surface answers a query the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lens.errors import BadRequest
from lens.index.catalog import Catalog
from lens.index.embedder import Embedder
from lens.query.ast import Query, Term, positive_terms
from lens.query.exact import (
    Deadline,
    ExactPlan,
    ExactState,
    estimate_candidates,
    finish,
    search_snapshot,
)
from lens.query.matchers import compile_pattern
from lens.query.parser import parse_query
from lens.query.ranked import chunk_hit, ranked_tokens, search_ranked
from lens.query.results import MODES, Hit, Mode, SearchResult, decode_cursor, encode_cursor, query_fingerprint
from lens.query.semantic import search_semantic, semantic_status
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
        for view in views:
            with view.snapshot() as snap:
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
            per_file = len(state.lines) / max(state.files_scanned, 1)
            total = max(len(state.lines), round(per_file * max(candidates, state.candidates)))
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
        hits: list[Hit] = []
        sem_status: dict[str, Any] | None = None
        warnings: list[str] = []
        timed_out = False
        for view in views:
            if deadline.expired():
                timed_out = True
                break
            with view.snapshot() as snap:
                if embedder is not None:
                    st = semantic_status(snap, embedder.model_id, embedder.dim)
                    sem_status = _merge_status(sem_status, st)
                if mode == "ranked":
                    hits.extend(search_ranked(snap, plan, tokens, want))
                elif mode == "semantic":
                    assert embedder is not None
                    hits.extend(search_semantic(snap, plan, embedder, query_text, want))
                else:
                    assert embedder is not None
                    hits.extend(_hybrid(snap, plan, embedder, tokens, query_text, want))
        if sem_status is not None and sem_status["status"] != "ready":
            warnings.append(
                f"semantic index is {sem_status['status']}: {sem_status['embedded']} of {sem_status['total']}"
                " chunks embedded; semantic results cover only those"
            )
        hits.sort(key=lambda h: (-h.score, h.repo, h.path, h.line_number))
        page = hits[offset : offset + limit]
        more = len(hits) > offset + limit
        return SearchResult(
            query="",
            mode=mode,
            results=page,
            total=len(hits) if not more else len(hits) - 1,
            total_is_estimate=more,
            truncated=more,
            timed_out=timed_out,
            next_cursor="" if more else None,
            took_ms=0.0,
            semantic=sem_status,
            stats={"shards": len(views), "tokens": tokens},
            warnings=warnings,
        )


def _merge_status(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return dict(b)
    embedded = a["embedded"] + b["embedded"]
    total = a["total"] + b["total"]
    statuses = {a["status"], b["status"]}
    status = next((s for s in ("stale_model", "pending") if s in statuses), "ready" if total else "empty")
    return {"status": status, "embedded": embedded, "total": total, "model": a.get("model") or b.get("model")}


def _symbol_hits(snap: Snapshot, plan: ExactPlan, tokens: list[str], want: int) -> list[Hit]:
    """Definitions named like a query term or like the query's tokens joined (get_user -> getuser)."""
    names = {t.text for t in positive_terms(plan.query.expr) if isinstance(t, Term)}
    if len(tokens) > 1:
        names.add("".join(tokens))
    out: list[tuple[int, str, int, Hit]] = []
    for name in sorted(names):
        rows = snap.conn.execute(
            "SELECT file_id, line, name, kind, container FROM symbols"
            " WHERE name = ? COLLATE NOCASE OR replace(name, '_', '') = ? COLLATE NOCASE LIMIT ?",
            (name, name, want),
        ).fetchall()
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


def _hybrid(
    snap: Snapshot, plan: ExactPlan, embedder: Embedder, tokens: list[str], text: str, want: int
) -> list[Hit]:
    """Reciprocal rank fusion of ranked, semantic and symbol hits, keyed by chunk span."""
    depth = max(want, 50)
    lists = {
        "bm25": search_ranked(snap, plan, tokens, depth) if tokens else [],
        "semantic": search_semantic(snap, plan, embedder, text, depth),
        "symbol": _symbol_hits(snap, plan, tokens, depth),
    }
    fused: dict[tuple[str, int, int], Hit] = {}
    for signal, hits in lists.items():
        for rank, hit in enumerate(hits):
            key = (hit.path, hit.start_line or hit.line_number, hit.end_line or hit.line_number)
            cur = fused.get(key)
            contribution = 1.0 / (RRF_K + rank + 1)
            if cur is None:
                cur = fused[key] = hit
                cur.signals = {}
                cur.why = []
                cur.score = 0.0
            elif signal == "symbol":
                cur.line_number, cur.line, cur.ranges = hit.line_number, hit.line, hit.ranges
                cur.symbol = hit.symbol
            cur.signals[signal] = round(hit.score, 6)
            cur.why.append(signal)
            cur.score += contribution
    return list(fused.values())
