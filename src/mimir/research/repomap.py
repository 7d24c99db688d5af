"""The repository map at any token budget, rendered from the research database.

Files in PageRank order, each with its most important definitions as their
first source line (the signature), methods indented under their class.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mimir.analyze.tokens import estimate_tokens

MAX_SYMBOLS_PER_FILE = 12


def render_from_db(db: sqlite3.Connection, token_budget: int) -> dict[str, Any]:
    parts: list[str] = []
    used = 0
    files_included = 0
    symbols_included = 0
    truncated = False
    for (path,) in db.execute("SELECT path FROM files ORDER BY rank DESC, path"):
        rows = db.execute(
            "SELECT s.name, s.kind, s.container, s.line, s.start_line, sn.text FROM symbols s"
            " LEFT JOIN snippets sn ON sn.symbol_id = s.id WHERE s.path = ?"
            " ORDER BY s.importance DESC, s.start_line LIMIT ?",
            (path, MAX_SYMBOLS_PER_FILE),
        ).fetchall()
        rows.sort(key=lambda r: r[4])
        block = [f"{path}:"]
        for name, _kind, container, line, start, text in rows:
            first = (text or "").split("\n")
            sig = first[line - start].strip() if text and 0 <= line - start < len(first) else name
            indent = "    " if container else "  "
            block.append(f"{indent}{sig[:160]}")
        chunk = "\n".join(block) + "\n"
        cost = estimate_tokens(chunk)
        if used + cost > token_budget:
            truncated = True
            break
        parts.append(chunk)
        used += cost
        files_included += 1
        symbols_included += len(rows)
    return {
        "text": "".join(parts),
        "tokens": used,
        "files_included": files_included,
        "symbols_included": symbols_included,
        "truncated": truncated,
        "token_budget": token_budget,
    }
