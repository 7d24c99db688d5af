"""The exact engine's prefilter and fast paths never lose a match.

- Regex requirements (exact-set expansion of small alternations and classes): every
  match of a generated regex contains one of the literals its requirement names.
- Trigram choice by document counts: any counts give a subset of the literal's trigrams.
- The ASCII-lowered search for case-insensitive literals agrees with RE2's ``(?i)``,
  including the two ASCII letters whose case folding leaves ASCII (K and S).
- Several shards: every page of a truncated result, followed by cursor, is a partition
  of all hits, whichever shard the reading order starts with.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lens.index.builder import index_repository
from lens.index.catalog import Catalog
from lens.query.ast import Term
from lens.query.matchers import TermMatcher
from lens.query.regex_plan import AllOf, AnyOf, Lit, Req, choose_trigrams, regex_requirements
from lens.query.searcher import Searcher

atom = st.sampled_from(["a", "b", "c", "ab", "bc", "[ab]", "[a-c]", "[^a]", ".", r"\w", "x", "_"])
quant = st.sampled_from(["", "", "", "?", "*", "+", "{2}", "{1,2}"])


@st.composite
def regex(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if depth < 2 and draw(st.integers(0, 3)) == 0:
            alts = draw(st.lists(regex(depth + 1), min_size=2, max_size=3))
            parts.append("(" + "|".join(alts) + ")" + draw(quant))
        else:
            parts.append(draw(atom) + draw(quant))
    return "".join(parts)


def satisfied(req: Req, text: str) -> bool:
    """Whether ``text`` meets ``req`` as the case-folded trigram index reads it."""
    if isinstance(req, Lit):
        return req.text.lower() in text.lower()
    if isinstance(req, AllOf):
        return all(satisfied(i, text) for i in req.items)
    assert isinstance(req, AnyOf)
    return any(satisfied(i, text) for i in req.items)


@settings(max_examples=400, deadline=None)
@given(pattern=regex(), text=st.text(alphabet="abcxAB_ \n", max_size=40))
def test_every_regex_match_meets_its_requirement(pattern: str, text: str) -> None:
    req = regex_requirements(pattern)
    if req is None:
        return
    for line in text.split("\n"):
        for m in re.finditer(pattern, line):
            if m.group(0):
                assert satisfied(req, m.group(0)), (pattern, m.group(0), req)


def test_alternations_expand_into_exact_strings() -> None:
    req = regex_requirements(r"func (Read|Write)(Byte|Rune)\(")
    assert isinstance(req, AnyOf)
    assert {i.text for i in req.items if isinstance(i, Lit)} == {
        "func ReadByte(",
        "func ReadRune(",
        "func WriteByte(",
        "func WriteRune(",
    }
    # Only the minimal strings are kept: a match containing "accd" contains "acc".
    assert regex_requirements("[ab]c{2}d?") == AnyOf((Lit("acc"), Lit("bcc")))


@given(text=st.text(min_size=3, max_size=30), seed=st.integers(0, 1000))
def test_chosen_trigrams_are_trigrams_of_the_literal(text: str, seed: int) -> None:
    def count(gram: str) -> int:
        return (hash(gram) + seed) % 50

    grams = {text[i : i + 3].lower() for i in range(len(text) - 2)}
    chosen = choose_trigrams(text, count)
    assert chosen and all(g.lower() in grams for g in chosen)


def test_zero_count_trigram_is_enough() -> None:
    counts = {"abc": 9, "bcd": 0, "cde": 4}
    assert choose_trigrams("abcde", lambda g: counts[g]) == ["bcd"]


def _re2_lines(term: str, content: bytes) -> list[tuple[int, int, list[tuple[int, int]]]]:
    matcher = TermMatcher(Term(term, 0), case_sensitive=False)
    matcher.folded = None  # force the RE2 path
    return list(matcher.lines(content))


@given(
    term=st.text(alphabet="skaSK_", min_size=1, max_size=4),
    content=st.text(alphabet="skaSK_\u017f\u212a\u00e9\n", max_size=40),
)
def test_ascii_folded_literal_agrees_with_re2(term: str, content: str) -> None:
    raw = content.encode()
    fast = TermMatcher(Term(term, 0), case_sensitive=False)
    assert fast.folded is not None
    assert list(fast.lines(raw)) == _re2_lines(term, raw)
    assert fast.present(raw) == bool(_re2_lines(term, raw))


def test_kelvin_and_long_s_match_case_insensitively() -> None:
    raw = "x = \u017f\u212a\n".encode()
    matcher = TermMatcher(Term("sk", 0), case_sensitive=False)
    assert matcher.present(raw)
    assert [ls for ls, _, _ in matcher.lines(raw)] == [0]


def test_pages_partition_hits_across_shards(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "data")
    for name, files, per_file in (("alpha", 3, 4), ("beta", 30, 6)):
        src = tmp_path / name
        src.mkdir()
        for i in range(files):
            (src / f"m{i:02}.py").write_text("".join(f"token_{j} = needle  # {j}\n" for j in range(per_file)))
        index_repository(catalog, name, src)
    searcher = Searcher(catalog)
    everything = searcher.search("needle", limit=1000)
    assert everything.total == 3 * 4 + 30 * 6 and not everything.truncated
    first = searcher.search("needle", limit=10)
    assert first.truncated and first.total_is_estimate
    # The shard with more candidate files is read first.
    assert first.results[0].repo == "beta"
    seen: list[tuple[str, str, int]] = []
    cursor = None
    while True:
        page = searcher.search("needle", limit=10, cursor=cursor)
        seen.extend((h.repo, h.path, h.line_number) for h in page.results)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == everything.total
    assert set(seen) == {(h.repo, h.path, h.line_number) for h in everything.results}
