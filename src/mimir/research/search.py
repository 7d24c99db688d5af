"""search_repo: hybrid retrieval over one index with per-signal scores and citations.

Signals: Lens exact lines, Lens BM25 chunks, Lens semantic chunks, symbol names
from the research database; then expansion one hop along the call graph and a
RepoMap prior (central files rise a little). Fusion is reciprocal rank fusion.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lens.parse.tokens import query_tokens
from mimir.analyze.tokens import estimate_tokens
from mimir.lensclient import LensRequestError, LensUnavailable, fallback_ready
from mimir.research.evidence import Degradation, IndexEvidence, SymbolRow

# Fusion parameters, chosen with benchmarks/quality.py on django: among django's best settings
# (within 0.003 nDCG@10 of each other, below the noise of 120 queries) the one that also did best
# on sympy was kept, so sympy is a validation corpus and go-std the held-out one (docs/benchmarks.md).
# Exact and graph hits still join the candidate set; on docstring-style questions they did not
# improve the order, so they carry no weight in it.
RRF_K = 10
WEIGHTS = {"exact": 0.0, "bm25": 1.0, "semantic": 3.0, "symbol": 0.3, "graph": 0.0}
RANK_PRIOR = 0.15
MAX_SPAN_LINES = 80
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_STOP = frozenset(
    "the and for with that this from what where when which how does are was were into have has not you your "
    "all any can get set use used using its it's about there their them then than function method class file "
    "code return returns value values".split()
)
MODES = ("hybrid", "exact", "ranked", "semantic")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _words(query: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in _WORD_RE.findall(query):
        if w.lower() not in _STOP:
            seen.setdefault(w, None)
    return list(seen)[:8]


def lens_queries(query: str) -> dict[str, str | None]:
    """Safe Lens queries for each signal (the user's text is never Lens syntax)."""
    words = _words(query)
    one_line = " ".join(query.split())[:500]
    return {
        "exact": ("(" + " OR ".join(_quote(w) for w in words) + ")") if words else None,
        "bm25": " ".join(_quote(w) for w in query_tokens(one_line)[:24]) or None,
        "semantic": _quote(one_line) if one_line else None,
    }


@dataclass
class Candidate:
    path: str
    start: int
    end: int
    symbol: SymbolRow | None = None
    signals: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    score: float = 0.0
    line: int | None = None


def _span_for(
    ev: IndexEvidence, path: str, line: int, start: int | None, end: int | None
) -> tuple[int, int, SymbolRow | None]:
    sym = ev.enclosing_symbol(path, line)
    if sym is not None and sym.end_line - sym.start_line < MAX_SPAN_LINES:
        return sym.start_line, sym.end_line, sym
    if start is not None and end is not None and end - start < MAX_SPAN_LINES:
        return start, end, sym
    return max(1, line - 5), line + 5, sym


def _lens_signal(
    ev: IndexEvidence, mode: str, lens_query: str, k: int, deg: Degradation
) -> list[dict[str, Any]]:
    lens_mode = {"exact": "exact", "bm25": "ranked", "semantic": "semantic"}[mode]
    try:
        with fallback_ready():  # the other signals answer without this one
            res = ev.lens.search(lens_query, mode=lens_mode, limit=k, context=0, repos=[ev.record.lens_repo])
    except LensUnavailable as exc:
        deg.add("lens", f"{mode}: {exc}")
        deg.add(mode, f"{mode}: {exc}")
        return []
    except LensRequestError as exc:
        if exc.code in ("bad_request", "bad_query"):
            # e.g. semantic search switched off on that Lens: the answer lacks this signal, say so.
            deg.add(mode, f"{mode}: {exc.message}")
            return []
        raise
    if mode == "semantic":
        sem = res.get("semantic") or {}
        if sem.get("status") not in (None, "ready"):
            deg.add(
                "semantic_partial",
                f"semantic index {sem.get('status')}: {sem.get('embedded')}/{sem.get('total')}",
            )
    hits: list[dict[str, Any]] = res.get("results", [])
    return hits


def gather(ev: IndexEvidence, query: str, k: int, mode: str, deg: Degradation) -> list[Candidate]:
    """Fused candidates, best first (no snippets read yet)."""
    depth = max(k * 3, 30)
    queries = lens_queries(query)
    lists: dict[str, list[Candidate]] = {}
    wanted = (
        ("exact", "bm25", "semantic", "symbol")
        if mode == "hybrid"
        else ({"exact": "exact", "ranked": "bm25", "semantic": "semantic"}[mode],)
    )
    for signal in wanted:
        if signal == "symbol":
            lists["symbol"] = _symbol_candidates(ev, query, depth)
            continue
        q = queries[signal]
        if q is None:
            continue
        cands: list[Candidate] = []
        for hit in _lens_signal(ev, signal, q, depth, deg):
            start, end, sym = _span_for(
                ev, hit["path"], hit["line_number"], hit.get("start_line"), hit.get("end_line")
            )
            c = Candidate(hit["path"], start, end, sym, line=hit["line_number"])
            c.signals[signal] = float(hit.get("score", 0.0))
            why = ",".join(hit.get("why", []))
            c.reasons.append(f"{signal}: {why} at line {hit['line_number']}")
            cands.append(c)
        lists[signal] = cands
    fused: dict[tuple[str, int, int], Candidate] = {}
    for signal, cands in lists.items():
        seen: set[tuple[str, int, int]] = set()
        rank = 0
        for c in cands:
            key = (c.path, c.start, c.end)
            if key in seen:
                continue
            seen.add(key)
            cur = fused.setdefault(key, Candidate(c.path, c.start, c.end, c.symbol, line=c.line))
            cur.signals[signal] = max(cur.signals.get(signal, float("-inf")), c.signals.get(signal, 0.0))
            cur.ranks[signal] = rank
            cur.reasons.extend(c.reasons[:1])
            cur.score += (WEIGHTS[signal] if mode == "hybrid" else 1.0) / (RRF_K + rank + 1)
            rank += 1
    ordered = sorted(fused.values(), key=lambda c: (-c.score, c.path, c.start))
    if mode == "hybrid":
        _expand(ev, ordered[: max(5, k // 2)], fused)
        top = max(ev.max_rank(), 1e-12)
        for c in fused.values():
            c.score *= 1.0 + RANK_PRIOR * (ev.file_rank(c.path) / top)
        ordered = sorted(fused.values(), key=lambda c: (-c.score, c.path, c.start))
    return ordered


def _symbol_candidates(ev: IndexEvidence, query: str, depth: int) -> list[Candidate]:
    names = _words(query)
    toks = query_tokens(query)
    if len(toks) > 1:
        names.append("".join(toks[:4]))
    out: list[Candidate] = []
    for name in names:
        for sym in ev.symbols_named(name, limit=5):
            if sym.end_line - sym.start_line >= MAX_SPAN_LINES:
                continue
            c = Candidate(sym.path, sym.start_line, sym.end_line, sym, line=sym.line)
            c.signals["symbol"] = 1.0 if sym.name.lower() == name.lower() else 0.5
            c.reasons.append(f"symbol: defines {sym.kind} {sym.name}")
            out.append(c)
    out.sort(key=lambda c: (-c.signals["symbol"], -(c.symbol.importance if c.symbol else 0.0), c.path))
    return out[:depth]


def _expand(ev: IndexEvidence, seeds: list[Candidate], fused: dict[tuple[str, int, int], Candidate]) -> None:
    """One hop along calls/called-by from the best symbol hits: related code the query did not name."""
    for seed in seeds:
        if seed.symbol is None:
            continue
        for kind, reverse, label in (("calls", False, "called by"), ("calls", True, "calls")):
            for sym, _res in ev.neighbors(seed.symbol.id, kind, reverse=reverse, limit=3):
                if sym.end_line - sym.start_line >= MAX_SPAN_LINES:
                    continue
                key = (sym.path, sym.start_line, sym.end_line)
                cur = fused.setdefault(
                    key, Candidate(sym.path, sym.start_line, sym.end_line, sym, line=sym.line)
                )
                bonus = WEIGHTS["graph"] * seed.score
                if "graph" not in cur.signals or cur.signals["graph"] < bonus:
                    cur.signals["graph"] = round(bonus, 6)
                    cur.reasons.append(f"graph: {label} {seed.symbol.name}")
                cur.score += bonus / 2


def search_repo(
    ev: IndexEvidence,
    query: str,
    *,
    k: int = 20,
    mode: str = "hybrid",
    context_lines: int = 5,
    token_budget: int | None = None,
) -> dict[str, Any]:
    if mode not in MODES:
        from mimir.errors import BadRequest

        raise BadRequest(f"mode must be one of {', '.join(MODES)}", details={"mode": mode})
    deg = Degradation()
    cands = gather(ev, query, k, mode, deg)
    results: list[dict[str, Any]] = []
    for i, c in enumerate(cands):
        if len(results) >= k:
            break
        if not ev.span_known(c.path, c.start, c.end, context_lines, deg):
            # One Lens call for every candidate that can still make the page (usually the first k);
            # another only if some of them turn out not to exist.
            window = cands[i : i + k - len(results)]
            ev.prefetch([(w.path, w.start, w.end) for w in window], context_lines, deg)
        span = ev.span(c.path, c.start, c.end, context_lines, deg)
        if span is None:
            continue
        results.append(
            {
                "rank": len(results) + 1,
                "score": round(c.score, 6),
                "signals": {s: round(v, 6) for s, v in c.signals.items()},
                "reason": "; ".join(dict.fromkeys(c.reasons)),
                "symbol": c.symbol.to_dict() if c.symbol else None,
                **span,
            }
        )
    out: dict[str, Any] = {
        "index_id": ev.record.index_id,
        "commit": ev.commit,
        "query": query,
        "mode": mode,
        "results": results,
        **deg.to_dict(),
    }
    if not results and deg.degraded:
        out["message"] = (
            "no results, and the answer is incomplete: " + ", ".join(deg.missing) + " unavailable"
        )
    return apply_budget(out, token_budget)


def apply_budget(out: dict[str, Any], token_budget: int | None) -> dict[str, Any]:
    """Trim context lines, then drop the lowest results, until the payload fits; say what was cut."""
    if token_budget is None:
        out["trimmed"] = None
        return out
    trimmed = {"context_lines_removed": 0, "results_dropped": 0, "token_budget": token_budget}
    results = out["results"]

    def size() -> int:
        return estimate_tokens(json.dumps(out))

    if size() > token_budget:
        for r in results:
            snip = r["snippet"]
            keep_from = r["start_line"] - snip["start_line"]
            keep = snip["lines"][keep_from : keep_from + (r["end_line"] - r["start_line"] + 1)]
            trimmed["context_lines_removed"] += len(snip["lines"]) - len(keep)
            snip["lines"], snip["start_line"] = keep, r["start_line"]
    while results and size() > token_budget:
        results.pop()
        trimmed["results_dropped"] += 1
    out["trimmed"] = trimmed
    out["tokens"] = size()
    return out
