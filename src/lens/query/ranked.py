"""Ranked mode: BM25 over identifier-aware tokens of AST chunks (SQLite FTS5 ``bm25``).

``getUserName`` and ``get_user_name`` both index as get/user/name (plus the
joined form), so either spelling finds the other. A hit is a chunk; its display
line is the first line in the chunk that contains a query token.
"""

from __future__ import annotations

import re

from lens.parse.tokens import query_tokens
from lens.query.ast import Regex, Term, positive_terms
from lens.query.exact import ExactPlan
from lens.query.results import Hit
from lens.query.shards import Snapshot

_MAX_TOKENS = 32


def ranked_tokens(plan: ExactPlan) -> list[str]:
    words: list[str] = []
    for t in positive_terms(plan.query.expr):
        text = t.text if isinstance(t, Term) else _regex_words(t)
        words.extend(query_tokens(text))
    return list(dict.fromkeys(w for w in words if w))[:_MAX_TOKENS]


def _regex_words(r: Regex) -> str:
    return " ".join(re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", r.pattern))


def fts_or(tokens: list[str]) -> str:
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in tokens)


# BM25 scores every chunk matching any query token, so very common tokens ("file", "read") make
# a query slow while adding little (their IDF is low). Tokens are kept rarest first until their
# document counts add up to this budget; at least one token is always kept.
_DOC_BUDGET = 8000


def prune_tokens(snap: Snapshot, tokens: list[str]) -> list[str]:
    """The query tokens worth scoring, rarest first; tokens absent from the shard are dropped."""
    snap.conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab USING fts5vocab(main, 'chunks_fts', 'row')"
    )
    dfs = []
    for t in tokens:
        row = snap.conn.execute("SELECT doc FROM temp.chunks_vocab WHERE term = ?", (t,)).fetchone()
        if row is not None:
            dfs.append((int(row[0]), t))
    dfs.sort()
    kept: list[str] = []
    total = 0
    for df, t in dfs:
        if kept and total + df > _DOC_BUDGET:
            break
        kept.append(t)
        total += df
    return kept


def search_ranked(snap: Snapshot, plan: ExactPlan, tokens: list[str], want: int) -> list[Hit]:
    """Top ``want`` chunks of one shard by BM25, after path/lang filters."""
    scored = prune_tokens(snap, tokens)
    if not scored:
        return []
    match = fts_or(scored)
    hits: list[Hit] = []
    fetch = max(want * 2, 50)
    seen = 0
    while True:
        rows = snap.conn.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
            " ORDER BY rank LIMIT ? OFFSET ?",
            (match, fetch, seen),
        ).fetchall()
        for chunk_id, score in rows:
            hit = _chunk_hit(snap, plan, int(chunk_id), -float(score), tokens, "bm25")
            if hit is not None:
                hits.append(hit)
                if len(hits) >= want:
                    return hits
        if len(rows) < fetch:
            return hits
        seen += fetch
        fetch *= 4


def _chunk_hit(
    snap: Snapshot, plan: ExactPlan, chunk_id: int, score: float, tokens: list[str], why: str
) -> Hit | None:
    row = snap.conn.execute(
        "SELECT file_id, start_line, end_line, kind, name FROM chunks WHERE id = ?", (chunk_id,)
    ).fetchone()
    if row is None:
        return None
    file_id, start, end, kind, name = row
    info = snap.files.get(file_id)
    if info is None or not plan.path_filter.accepts(info.path, info.lang):
        return None
    return chunk_hit(snap, info.id, start, end, kind, name, score, tokens, why, plan.context)


def chunk_hit(
    snap: Snapshot,
    file_id: int,
    start: int,
    end: int,
    kind: str,
    name: str | None,
    score: float,
    tokens: list[str],
    why: str,
    context: int = 0,
) -> Hit:
    """A hit for a chunk span, shown at its most telling line."""
    info = snap.files[file_id]
    first = max(0, start - 1 - context)
    raw = snap.content(file_id).split(b"\n", end + context)[first : end + context]
    lines = [""] * first + [r.decode("utf-8", "replace") for r in raw]
    span = lines[start - 1 : end]
    best = 0
    lowered = [ln.lower() for ln in span]
    if name:
        for i, ln in enumerate(span):
            if name in ln:
                best = i
                break
    if tokens:
        for i, ln in enumerate(lowered):
            if any(t in ln for t in tokens):
                best = i
                break
    line_no = start + best
    text = span[best] if span else ""
    ranges: list[tuple[int, int]] = []
    low = text.lower()
    for t in tokens:
        pos = low.find(t)
        while pos >= 0 and len(ranges) < 16:
            ranges.append((pos, pos + len(t)))
            pos = low.find(t, pos + len(t))
    return Hit(
        repo=snap.repo,
        path=info.path,
        commit=snap.commit,
        language=info.lang,
        line_number=line_no,
        line=text[:2000],
        ranges=sorted(ranges),
        score=score,
        why=[why],
        before=[ln[:2000] for ln in lines[max(0, line_no - 1 - context) : line_no - 1]] if context else [],
        after=[ln[:2000] for ln in lines[line_no : line_no + context]] if context else [],
        start_line=start,
        end_line=end,
        symbol={"name": name, "kind": kind, "container": None} if name else None,
    )
