"""Ranked, semantic and hybrid search over several shards: the two-pass search (score every shard,
then read text only for the page) must page exactly like sorting every shard's full result list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lens.query.searcher as searcher_mod
from gitrepo import commit_all, write_files
from lens.engine import Lens
from lens.index.embedder import MiniLMEmbedder
from lens.query.exact import ExactPlan
from lens.query.parser import parse_query
from lens.query.ranked import ranked_tokens, search_ranked
from lens.query.results import Hit
from lens.query.semantic import search_semantic


def _files(variant: int) -> dict[str, str | bytes]:
    """Functions sharing words in different proportions; several are identical (equal scores)."""
    files: dict[str, str | bytes] = {}
    for i in range(12):
        words = " ".join(["header"] * (1 + i % 3) + ["parse"] * (1 + (i + variant) % 4))
        files[f"pkg{i % 3}/mod{i}.py"] = (
            f"def parse_header_{i % 4}(data):\n    # {words}\n    return data\n\n\n"
            f"def other_{i}():\n    return 'request header'\n"
        )
    return files


def _key(h: Hit) -> tuple[Any, ...]:
    return (h.repo, h.path, h.line_number, h.start_line, h.end_line, round(h.score, 9), h.line)


def _reference(lens: Lens, query: str, mode: str) -> list[tuple[Any, ...]]:
    """Every shard's complete result list, shown in one pass and sorted as the searcher promises."""
    plan = ExactPlan(parse_query(query), 0)
    tokens = ranked_tokens(plan)
    embedder = lens.searcher.embedder()
    assert embedder is not None
    hits: list[Hit] = []
    for view in lens.searcher.shards.views():
        with view.snapshot() as snap:
            if mode == "ranked":
                hits.extend(search_ranked(snap, plan, tokens, 10_000))
            else:
                hits.extend(search_semantic(snap, plan, embedder, query, 10_000))
    hits.sort(key=lambda h: (-h.score, h.repo, h.path, h.line_number))
    return [_key(h) for h in hits]


def _pages(lens: Lens, query: str, mode: str, limit: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    cursor: str | None = None
    while True:
        res = lens.search(query, mode=mode, limit=limit, cursor=cursor)
        out.extend(_key(h) for h in res.results)
        if not res.next_cursor:
            return out
        cursor = res.next_cursor


@pytest.fixture
def three_shards(make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]) -> Lens:
    lens = lens_factory()
    # "b" repeats "a": every chunk of "a" ties with one in "b", so ties straddle shards.
    for name, variant in (("a", 0), ("b", 0), ("c", 1)):
        lens.index(make_repo(_files(variant)), name=name)
        lens.embed(name)
    return lens


@pytest.mark.parametrize("mode", ["ranked", "semantic"])
@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_pages_equal_one_full_sort(three_shards: Lens, mode: str, limit: int) -> None:
    query = "parse header"
    reference = _reference(three_shards, query, mode)
    assert len(reference) > 20
    assert len({k[5] for k in reference}) < len(reference), "the corpus must produce equal scores"
    assert _pages(three_shards, query, mode, limit) == reference


def test_hybrid_pages_partition_the_full_result(three_shards: Lens) -> None:
    whole = _pages(three_shards, "parse_header", "hybrid", 1000)
    assert len(whole) > 20
    assert _pages(three_shards, "parse_header", "hybrid", 4) == whole


def test_hybrid_signals_keep_every_score(three_shards: Lens) -> None:
    res = three_shards.search("parse_header", mode="hybrid", limit=50)
    both = [h for h in res.results if "bm25" in h.signals and "semantic" in h.signals]
    assert both
    # The first signal's own score used to be reported as 0.0.
    assert all(h.signals["bm25"] > 0 for h in both)
    assert all(0 < h.score <= len(h.why) / (searcher_mod.RRF_K + 1) for h in res.results)


def test_a_shard_updated_between_the_passes_is_searched_again(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass 2 reads text for pass 1's spans; if the shard changed in between, the search starts over
    rather than showing old line numbers against new text."""
    lens = lens_factory()
    repo = make_repo({"m.py": "def target_word():\n    return 1\n"})
    lens.index(repo, name="r")
    real_select = searcher_mod._select
    calls = {"n": 0}

    def select_then_update(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            write_files(repo, {"m.py": "\n\n\n# moved down\ndef target_word():\n    return 2\n"})
            commit_all(repo, "move")
            lens.index(repo, name="r")
        return real_select(*args, **kwargs)

    monkeypatch.setattr(searcher_mod, "_select", select_then_update)
    res = lens.search("target_word", mode="ranked")
    assert calls["n"] == 2
    assert [(h.path, h.line_number, h.line) for h in res.results] == [("m.py", 5, "def target_word():")]


def test_query_embedding_runs_on_its_own_session() -> None:
    m = MiniLMEmbedder()
    q = "where is the retry logic"
    single = m.embed_query(q)
    np.testing.assert_allclose(single, m.embed([q])[0], atol=1e-5)
    assert m.embed_query(q) is single
    m.clear_query_cache()
    again = m.embed_query(q)
    assert again is not single
    np.testing.assert_array_equal(again, single)


def test_hybrid_symbol_signal_matches_names_without_underscores(three_shards: Lens) -> None:
    # No definition is named parseHeader0; parse_header_0 is, once underscores and case are ignored.
    res = three_shards.search("parseHeader0", mode="hybrid", limit=200)
    names = {h.symbol["name"] for h in res.results if "symbol" in h.why and h.symbol}
    assert names == {"parse_header_0"}
    res = three_shards.search("parseHeader9", mode="hybrid", limit=200)
    assert not any("symbol" in h.why for h in res.results)


def test_symbol_lookups_use_indexes(three_shards: Lens) -> None:
    """An OR over name and replace(name) scanned every symbol of a shard once per query word."""
    view = three_shards.searcher.shards.views()[0]
    with view.snapshot() as snap:
        plan = [
            row[3]
            for row in snap.conn.execute("EXPLAIN QUERY PLAN " + searcher_mod.SYMBOL_LOOKUP, ("a", "a", 5))
        ]
    assert any("symbols_name_nocase" in step for step in plan)
    assert any("symbols_flat" in step for step in plan)
    assert not any(step.startswith("SCAN symbols") for step in plan)


@pytest.mark.parametrize(
    "content", [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\nx\n\n", b"one\ntwo\nthree\nfour\n"]
)
def test_slice_lines_equals_split(content: bytes) -> None:
    from lens.query.ranked import slice_lines

    newlines = np.flatnonzero(np.frombuffer(content, dtype=np.uint8) == 10)
    whole = content.split(b"\n")
    for lo in range(len(whole) + 3):
        for hi in range(len(whole) + 3):
            assert slice_lines(content, newlines, lo, hi) == whole[lo:hi], (lo, hi)


def test_ranked_prunes_common_tokens_past_the_document_budget(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.query.ranked as ranked_mod

    files: dict[str, str | bytes] = {
        f"m{i}.py": f"def f{i}():\n    return 'widget'\n" + ("def g():\n    zebra = 1\n" if i == 0 else "")
        for i in range(12)
    }
    lens = lens_factory()
    lens.index(make_repo(files), name="r")
    view = lens.searcher.shards.views()[0]
    with view.snapshot() as snap:
        counts = ranked_mod.doc_counts(snap, ["widget", "zebra"])
        assert counts["zebra"] is not None and counts["widget"] is not None
        assert counts["zebra"] < counts["widget"]
        monkeypatch.setattr(ranked_mod, "_DOC_BUDGET", counts["widget"] + counts["zebra"])
        assert ranked_mod.prune_tokens(snap, ["widget", "zebra", "absent"]) == ["zebra", "widget"]
        monkeypatch.setattr(ranked_mod, "_DOC_BUDGET", counts["widget"])
        assert ranked_mod.prune_tokens(snap, ["widget", "zebra"]) == ["zebra"]  # rarest first, then cut
        monkeypatch.setattr(ranked_mod, "_DOC_BUDGET", 0)
        assert ranked_mod.prune_tokens(snap, ["widget"]) == ["widget"]  # one token is always kept
