"""Static per-file rank class: where a file sorts before any query runs.

Tests and vendored or generated code still match, but after the code people
usually look for first (the exact-mode ranking rule "tests/vendor rank lower").
"""

from __future__ import annotations

import re

from lens.index.shard import CLASS_LOW, CLASS_NORMAL, CLASS_TEST

_TEST_RE = re.compile(
    r"(^|/)(tests?|__tests__|spec|specs|testing|testdata|test-data|fixtures)/"
    r"|(^|/)test_[^/]*\.py$|_test\.(py|go|rs|c|cc|cpp)$"
    r"|\.(test|spec)\.(js|jsx|ts|tsx|mjs|cjs)$"
    r"|(^|/)[^/]*Tests?\.(java|kt|cs|scala)$"
)
_LOW_RE = re.compile(
    r"(^|/)(third_party|third-party|thirdparty|external|extern|deps|vendored|_vendor|examples?|"
    r"samples?|benchmarks?|docs?)/"
    r"|\.pb\.go$|_pb2\.py$|(^|/)zz_generated[^/]*$|_generated\.[a-z]+$|\.generated\.[a-z]+$"
)


def rank_class(path: str) -> int:
    if _TEST_RE.search(path):
        return CLASS_TEST
    if _LOW_RE.search(path):
        return CLASS_LOW
    return CLASS_NORMAL
