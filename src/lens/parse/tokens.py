"""Identifier-aware tokens for BM25.

Code spells one concept many ways (``getUserName``, ``get_user_name``, ``GetUserName``), so each
identifier yields its lower-cased parts plus the parts joined without separators: every spelling
shares ``get``/``user``/``name`` and also ``getusername``, which rewards exact-identifier matches.

Rules (applied identically to documents and queries):

* identifiers are runs of ``\\w`` (letters, digits, underscore, any script);
* parts split at underscores, lower->upper (``getUser``), and acronym ends (``HTTPResponse`` ->
  ``HTTP``, ``Response``); digits stay with the letters before them (``utf8``, ``int64``,
  ``sha256``) because those are names, not numbers;
* a run starting with a digit is a literal (``404``, ``0x1f``) and is kept whole;
* one-character tokens are dropped: they are in nearly every file and only bloat postings.
"""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"\w+")
_ASCII_PART_RE = re.compile(r"[A-Z][A-Z0-9]*(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z][A-Z0-9]*")
MAX_IDENTIFIER = 100  # longer runs are blobs (base64, minified data), not names

_CACHE: dict[str, tuple[str, ...]] = {}
_CACHE_MAX = 1 << 18


def _unicode_parts(word: str) -> list[str]:
    """The ASCII rules via per-character case tests, for the rare non-ASCII identifier."""
    parts: list[str] = []
    for piece in word.split("_"):
        start = 0
        n = len(piece)
        for i in range(1, n):
            cur = piece[i]
            if not cur.isupper():
                continue
            prev = piece[i - 1]
            if prev.islower() or prev.isdigit() or (prev.isupper() and i + 1 < n and piece[i + 1].islower()):
                parts.append(piece[start:i])
                start = i
        if start < n:
            parts.append(piece[start:])
    return parts


def _split(word: str) -> tuple[str, ...]:
    if len(word) > MAX_IDENTIFIER:
        return ()
    if word[0].isdigit():
        return (word.lower(),) if len(word) > 1 else ()
    parts = _ASCII_PART_RE.findall(word) if word.isascii() else _unicode_parts(word)
    out = [p.lower() for p in parts if len(p) > 1]
    if len(parts) > 1:
        joined = "".join(parts).lower()
        if len(joined) > 1:
            out.append(joined)
    return tuple(out)


def tokenize(text: str) -> list[str]:
    """BM25 terms of ``text`` in order, with repeats (term frequency matters)."""
    out: list[str] = []
    cache = _CACHE
    for word in _WORD_RE.findall(text):
        toks = cache.get(word)
        if toks is None:
            toks = _split(word)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[word] = toks
        out.extend(toks)
    return out


def query_tokens(text: str) -> list[str]:
    """Terms of a search query; the same rules as :func:`tokenize` so query and index agree."""
    return tokenize(text)
