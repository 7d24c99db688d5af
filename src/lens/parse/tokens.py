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
from operator import itemgetter

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


_JOINED: dict[str, str] = {}
_ASCII_CACHE_MAX = 1 << 19  # large code bases have a few hundred thousand distinct identifiers
# Every ASCII byte that ``\w`` does not match maps to a space, so that for ASCII text
# ``data.translate(_ASCII_SPACE).split()`` gives the words ``\w+`` finds, several times faster.
_ASCII_SPACE = bytes(b if b >= 128 or re.fullmatch(r"\w", chr(b)) else 32 for b in range(256))
# The same, except that ``\x01`` is kept: line_token_texts() turns each newline into that word.
_ASCII_LINES = bytes(1 if b == 1 else v for b, v in enumerate(_ASCII_SPACE))
_ASCII_SEED = {b"\x01": "\n", b"": ""}
_JOINED_ASCII: dict[bytes, str] = dict(_ASCII_SEED)


def token_text(text: str) -> str:
    """``" ".join(tokenize(text))``, computed per distinct word instead of per occurrence.

    The indexer's hot path: each word maps, through a cache, to its terms already joined, so the
    per-occurrence work (find, look up, join) runs in C.
    """
    if text.isascii():
        return token_text_ascii(text.encode("ascii"))
    words = _WORD_RE.findall(text)
    cache = _JOINED
    try:
        return " ".join(filter(None, map(cache.__getitem__, words)))
    except KeyError:
        pass
    missing = set(words).difference(cache)
    if len(cache) + len(missing) > _CACHE_MAX:
        cache.clear()
        missing = set(words)
    for word in missing:
        cache[word] = " ".join(_split(word))
    return " ".join(filter(None, map(cache.__getitem__, words)))


def token_text_ascii(data: bytes) -> str:
    """:func:`token_text` of ASCII text given as bytes (e.g. a slice of a file's content)."""
    text = "".join(_ascii_terms(data.translate(_ASCII_SPACE).split()))
    return text[:-1]


def line_token_texts(data: bytes) -> list[str]:
    """For ASCII ``data``, the token text of each of its lines (``data.split(b"\\n")``).

    Each entry is :func:`token_text` of that line followed by one space, or ``""`` when the line
    has no terms, so ``"".join(entries[a:b])[:-1]`` is the token text of lines a..b-1 joined by
    newlines. Every word of the file is looked up once, however many chunks include its line.
    """
    words = data.replace(b"\x01", b" ").replace(b"\n", b" \x01 ").translate(_ASCII_LINES).split()
    return "".join(_ascii_terms(words)).split("\n")


def _ascii_terms(words: list[bytes]) -> tuple[str, ...]:
    """Each word's joined terms plus a trailing space (``""`` for none); ``\\x01`` is a newline."""
    cache = _JOINED_ASCII
    if len(words) < 2:
        words = [*words, b""]  # itemgetter of one key returns the value, not a tuple
    get = itemgetter(*words)
    try:
        return get(cache)  # type: ignore[no-any-return]
    except KeyError:
        pass
    missing = set(words).difference(cache)
    if len(cache) + len(missing) > _ASCII_CACHE_MAX:
        cache.clear()
        cache.update(_ASCII_SEED)
        missing = set(words).difference(cache)
    for word in missing:
        terms = " ".join(_split(word.decode("ascii")))
        cache[word] = terms + " " if terms else ""
    return get(cache)  # type: ignore[no-any-return]


def query_tokens(text: str) -> list[str]:
    """Terms of a search query; the same rules as :func:`tokenize` so query and index agree."""
    return tokenize(text)
