"""Ranked mode: BM25 over identifier-aware tokens of AST chunks (SQLite FTS5 ``bm25``).

``getUserName`` and ``get_user_name`` both index as get/user/name (plus the
joined form), so either spelling finds the other. A hit is a chunk; its display
line is the first line in the chunk that contains a query token.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
# document counts add up to this budget; at least one token is always kept. 4000 rather than 8000:
# ranked p95 on go-std + jdk 21 -> 13.5 ms, with ranked nDCG@10 equal or better and hybrid within
# 0.007 on the quality harness (django, go-std; docs/benchmarks.md).
_DOC_BUDGET = 4000


def prune_tokens(snap: Snapshot, tokens: list[str]) -> list[str]:
    """The query tokens worth scoring, rarest first; tokens absent from the shard are dropped."""
    counts = doc_counts(snap, tokens)
    dfs = sorted((df, t) for t, df in counts.items() if df is not None)
    kept: list[str] = []
    total = 0
    for df, t in dfs:
        if kept and total + df > _DOC_BUDGET:
            break
        kept.append(t)
        total += df
    return kept


# Document counts per token, per shard generation: reading one from fts5vocab walks the token's whole
# document list (up to ~2 ms for a common token), and queries keep using the same words.
# repository dir -> (shard file, generation, token -> count or None when absent)
_df_cache: dict[str, tuple[str, int, dict[str, int | None]]] = {}
_df_lock = threading.Lock()
_DF_CACHE_TOKENS = 100_000


def doc_counts(snap: Snapshot, tokens: Iterable[str]) -> dict[str, int | None]:
    """How many chunks of this snapshot contain each token (None: the token is not indexed)."""
    repo_dir, shard = str(snap.shard.parent.parent), str(snap.shard)
    with _df_lock:
        cached = _df_cache.get(repo_dir)
        if cached is None or cached[0] != shard or cached[1] != snap.generation:
            cached = _df_cache[repo_dir] = (shard, snap.generation, {})
        known = cached[2]
        if len(known) > _DF_CACHE_TOKENS:
            known.clear()
        out = {t: known[t] for t in tokens if t in known}
    missing = [t for t in dict.fromkeys(tokens) if t not in out]
    if missing:
        snap.conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab USING fts5vocab(main, 'chunks_fts', 'row')"
        )
        for t in missing:
            row = snap.conn.execute("SELECT doc FROM temp.chunks_vocab WHERE term = ?", (t,)).fetchone()
            out[t] = int(row[0]) if row is not None else None
        with _df_lock:
            known.update((t, out[t]) for t in missing)
    return out


ChunkRow = tuple[int, int, int, str, str | None]  # file_id, start_line, end_line, kind, name


def chunk_rows(snap: Snapshot, chunk_ids: list[int]) -> dict[int, ChunkRow]:
    """The rows of these chunks, in one statement."""
    if not chunk_ids:
        return {}
    rows = snap.conn.execute(
        "SELECT id, file_id, start_line, end_line, kind, name FROM chunks"
        " WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(chunk_ids),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}


class FileLines:
    """File lines for one batch of hits from one snapshot: each file is read and split once.

    :meth:`prefetch` reads many files in one statement, so that a thread can do all of a batch's
    reading (no GIL held) and leave the splitting and decoding (Python) to another; after
    :meth:`detach` (the snapshot is over) only prefetched files can be asked for.
    """

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self._content: dict[int, bytes] = {}
        self._newlines: dict[int, npt.NDArray[np.intp]] = {}
        self._detached = False

    def prefetch(self, file_ids: Iterable[int]) -> None:
        """Read these files (those already read are skipped)."""
        wanted = [f for f in dict.fromkeys(file_ids) if f not in self._content]
        if wanted:
            rows = self.snap.conn.execute(
                "SELECT id, CAST(content AS BLOB) FROM files WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
            self._content.update((r[0], bytes(r[1])) for r in rows)
            self._content.update((f, b"") for f in wanted if f not in self._content)

    def detach(self) -> None:
        self._detached = True

    def lines(self, file_id: int, lo: int, hi: int) -> list[bytes]:
        """``content.split(b"\\n")[lo:hi]``, splitting only those lines.

        A hit needs a chunk's few lines, often deep in a large file: splitting the file up to
        them made one ``bytes`` object per earlier line and was most of a page's cost. The file's
        newline offsets (found by numpy, in C) locate the slice instead.
        """
        newlines = self._newlines.get(file_id)
        content = self._content.get(file_id)
        if content is None:
            if self._detached:
                raise RuntimeError(f"file {file_id} was not prefetched before the snapshot ended")
            content = self._content[file_id] = self.snap.content(file_id)
        if newlines is None:
            newlines = self._newlines[file_id] = np.flatnonzero(np.frombuffer(content, dtype=np.uint8) == 10)
        return slice_lines(content, newlines, lo, hi)


def slice_lines(content: bytes, newlines: npt.NDArray[np.intp], lo: int, hi: int) -> list[bytes]:
    """``content.split(b"\\n")[lo:hi]`` for ``lo, hi >= 0``, given the offsets of its newlines."""
    parts = len(newlines) + 1
    lo, hi = min(lo, parts), min(hi, parts)
    if lo >= hi:
        return []
    start = 0 if lo == 0 else int(newlines[lo - 1]) + 1
    stop = len(content) if hi >= parts else int(newlines[hi - 1])
    return content[start:stop].split(b"\n")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A scored chunk not yet turned into a :class:`Hit`: everything needed to show it later.

    Searches over several shards first collect candidates from each shard, keep the best few
    overall, and only then read file content for those (:meth:`materialize`), which is most of a
    hit's cost.
    """

    score: float
    file_id: int
    start: int
    end: int
    kind: str
    name: str | None
    tokens: tuple[str, ...]
    why: str

    def files(self) -> tuple[int, ...]:
        return (self.file_id,)

    def materialize(self, lines: FileLines, context: int) -> Hit:
        return chunk_hit(
            lines.snap,
            self.file_id,
            self.start,
            self.end,
            self.kind,
            self.name,
            self.score,
            list(self.tokens),
            self.why,
            context,
            lines,
        )


def ranked_candidates(snap: Snapshot, plan: ExactPlan, tokens: list[str], want: int) -> list[Candidate]:
    """Top ``want`` chunks of one shard by BM25, after path/lang filters, best first."""
    scored = prune_tokens(snap, tokens)
    if not scored:
        return []
    match = fts_or(scored)
    shown = tuple(tokens)
    out: list[Candidate] = []
    fetch = max(want * 2, 50)
    seen = 0
    while True:
        rows = snap.conn.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
            " ORDER BY rank LIMIT ? OFFSET ?",
            (match, fetch, seen),
        ).fetchall()
        chunks = chunk_rows(snap, [r[0] for r in rows])
        for chunk_id, score in rows:
            row = chunks.get(chunk_id)
            if row is None:
                continue
            info = snap.files.get(row[0])
            if info is None or not plan.path_filter.accepts(info.path, info.lang):
                continue
            out.append(Candidate(-float(score), row[0], row[1], row[2], row[3], row[4], shown, "bm25"))
            if len(out) >= want:
                return out
        if len(rows) < fetch:
            return out
        seen += fetch
        fetch *= 4


def search_ranked(snap: Snapshot, plan: ExactPlan, tokens: list[str], want: int) -> list[Hit]:
    """Top ``want`` chunks of one shard by BM25, after path/lang filters."""
    lines = FileLines(snap)
    return [c.materialize(lines, plan.context) for c in ranked_candidates(snap, plan, tokens, want)]


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
    lines_of: FileLines | None = None,
) -> Hit:
    """A hit for a chunk span, shown at its most telling line."""
    info = snap.files[file_id]
    first = max(0, start - 1 - context)
    raw = (  # lines first+1 .. end+context
        lines_of.lines(file_id, first, end + context)
        if lines_of is not None
        else snap.content(file_id).split(b"\n", end + context)[first : end + context]
    )
    span = [r.decode("utf-8", "replace") for r in raw[start - 1 - first : end - first]]
    best = 0
    if name:
        for i, ln in enumerate(span):
            if name in ln:
                best = i
                break
    if tokens:
        # The first line holding any token is the line of the earliest match in the whole span
        # (tokens never contain a newline): one scan per token instead of a loop over lines.
        low_span = "\n".join(span).lower()
        found = [p for p in (low_span.find(t) for t in tokens) if p >= 0]
        if found:
            best = low_span.count("\n", 0, min(found))
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
        before=_decoded(raw[max(0, line_no - 1 - context) - first : line_no - 1 - first]) if context else [],
        after=_decoded(raw[line_no - first : line_no + context - first]) if context else [],
        start_line=start,
        end_line=end,
        symbol={"name": name, "kind": kind, "container": None} if name else None,
    )


def _decoded(raw: list[bytes]) -> list[str]:
    return [r.decode("utf-8", "replace")[:2000] for r in raw]
