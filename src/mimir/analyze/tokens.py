"""Token estimates for budgeting text sent to language models.

We approximate one token per 4 characters (rounded up): BPE tokenizers such as cl100k/o200k average
roughly 3.5-4.5 characters per token on source code and English, so this is accurate to about 15%
on typical text, needs no tokenizer download, is deterministic, and is fast enough to call in inner
loops.  Callers that must never exceed a hard model limit should keep a safety margin.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text``: ``ceil(len(text) / 4)``; 0 for the empty string."""
    return -(-len(text) // CHARS_PER_TOKEN)
