"""ask_index: multi-hop research that answers only from cited evidence.

Seeds come from search_repo; then the symbol graph is walked (callees, callers,
base classes, implementations) up to ``max_hops``. Without an LLM the answer is
extractive: what was found, where, and how it connects. With an LLM the prose is
the model's, but it may cite only evidence ids Mimir supplied; any other citation
is dropped and reported.
"""

from __future__ import annotations

import re
from typing import Any

from mimir.research.evidence import Degradation, IndexEvidence, SymbolRow
from mimir.research.llm import LLMClient, LLMError
from mimir.research.search import Candidate, apply_budget, gather

MAX_FINDINGS = 24
SEEDS = 5
_RELATIONS = (
    ("calls", False, "calls"),
    ("calls", True, "is called by"),
    ("inherits", False, "inherits from"),
    ("inherits", True, "is inherited by"),
)
_EVIDENCE_REF = re.compile(r"\[(E\d+)\]")


def ask_index(
    ev: IndexEvidence,
    question: str,
    *,
    max_hops: int = 3,
    token_budget: int | None = None,
    llm: LLMClient | None = None,
    context_lines: int = 2,
) -> dict[str, Any]:
    deg = Degradation()
    max_hops = max(0, min(max_hops, 6))
    seeds = gather(ev, question, SEEDS * 2, "hybrid", deg)[: SEEDS * 2]
    findings: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier: list[tuple[SymbolRow, int]] = []
    for i, c in enumerate(seeds):
        if len(findings) >= SEEDS:
            break
        key = _seed_key(c)
        if key in seen:
            continue
        if not ev.span_known(c.path, c.start, c.end, context_lines, deg):
            # One Lens call for the seeds that can still be used, not one per seed.
            window: dict[str, Candidate] = {}
            for w in seeds[i:]:
                if _seed_key(w) not in seen:
                    window.setdefault(_seed_key(w), w)
            picked = list(window.values())[: SEEDS - len(findings)]
            ev.prefetch([(w.path, w.start, w.end) for w in picked], context_lines, deg)
        span = ev.span(c.path, c.start, c.end, context_lines, deg)
        if span is None:
            continue
        seen.add(key)
        findings.append(
            _finding(
                len(findings) + 1,
                0,
                "matches the question",
                None,
                c.symbol,
                span,
                "; ".join(dict.fromkeys(c.reasons)),
            )
        )
        if c.symbol is not None:
            frontier.append((c.symbol, len(findings)))
    hops_done = 0
    for hop in range(1, max_hops + 1):
        nxt: list[tuple[SymbolRow, int]] = []
        # The hop's links in the order they are considered; their spans are read in one Lens call.
        links = [
            (sym, parent_id, label, other, resolution)
            for sym, parent_id in frontier
            for kind, reverse, label in _RELATIONS
            for other, resolution in ev.neighbors(sym.id, kind, reverse=reverse, limit=3)
        ]
        for i, (sym, parent_id, label, other, resolution) in enumerate(links):
            if other.id in seen or len(findings) >= MAX_FINDINGS:
                continue
            if not ev.span_known(other.path, other.start_line, _hop_end(other), context_lines, deg):
                unseen = {link[3].id: link[3] for link in links[i:] if link[3].id not in seen}
                wanted = list(unseen.values())[: MAX_FINDINGS - len(findings)]
                ev.prefetch([(o.path, o.start_line, _hop_end(o)) for o in wanted], context_lines, deg)
            span = ev.span(other.path, other.start_line, _hop_end(other), context_lines, deg)
            if span is None:
                continue
            seen.add(other.id)
            findings.append(
                _finding(
                    len(findings) + 1,
                    hop,
                    f"{sym.name} {label} {other.name}",
                    parent_id,
                    other,
                    span,
                    f"resolution: {resolution or 'exact'}",
                )
            )
            nxt.append((other, len(findings)))
        if not nxt:
            break
        hops_done = hop
        frontier = nxt
    answer = _extractive_answer(question, findings)
    out: dict[str, Any] = {
        "index_id": ev.record.index_id,
        "commit": ev.commit,
        "question": question,
        "max_hops": max_hops,
        "hops": hops_done,
        "answer": answer,
        "answer_kind": "extractive",
        "findings": findings,
        "dropped_citations": [],
        **deg.to_dict(),
    }
    if llm is not None and findings:
        try:
            prose, used, dropped = _llm_answer(llm, question, findings)
            out.update(answer=prose, answer_kind="llm", cited=used, dropped_citations=dropped)
        except LLMError as exc:
            out["llm_error"] = str(exc)
            out.setdefault("missing", []).append("llm")
            out["degraded"] = True
    if not findings:
        out["answer"] = "No evidence found in this index for the question." + (
            " The search was incomplete: " + ", ".join(deg.missing) + " unavailable." if deg.degraded else ""
        )
    out = apply_budget({**out, "results": out.pop("findings")}, token_budget)
    out["findings"] = out.pop("results")
    return out


def _seed_key(c: Candidate) -> str:
    return c.symbol.id if c.symbol else f"{c.path}:{c.start}"


def _hop_end(sym: SymbolRow) -> int:
    """A linked symbol is cited up to 61 lines."""
    return min(sym.end_line, sym.start_line + 60)


def _finding(
    fid: int,
    hop: int,
    relation: str,
    parent: int | None,
    sym: SymbolRow | None,
    span: dict[str, Any],
    reason: str,
) -> dict[str, Any]:
    return {
        "id": f"E{fid}",
        "hop": hop,
        "relation": relation,
        "from": f"E{parent}" if parent else None,
        "symbol": sym.to_dict() if sym else None,
        "reason": reason,
        **span,
    }


def _describe(f: dict[str, Any]) -> str:
    sym = f.get("symbol")
    what = f"{sym['kind']} `{sym['name']}`" if sym else f"lines {f['start_line']}-{f['end_line']}"
    return f"{what} in {f['path']} [{f['id']}: {f['citation']}]"


def _extractive_answer(question: str, findings: list[dict[str, Any]]) -> str:
    if not findings:
        return ""
    seeds = [f for f in findings if f["hop"] == 0]
    lines = [f'Most relevant to "{question.strip()}":']
    lines += [f"- {_describe(f)} ({f['reason']})" for f in seeds]
    linked = [f for f in findings if f["hop"] > 0]
    if linked:
        lines.append("How it connects:")
        lines += [f"- {f['relation']}: {_describe(f)} (hop {f['hop']}, via {f['from']})" for f in linked]
    return "\n".join(lines)


def _llm_answer(
    llm: LLMClient, question: str, findings: list[dict[str, Any]]
) -> tuple[str, list[str], list[str]]:
    evidence = "\n\n".join(
        f"[{f['id']}] {f['citation']} ({f['relation']})\n" + "\n".join(f["snippet"]["lines"][:60])
        for f in findings
    )
    system = (
        "You answer questions about a code repository using ONLY the evidence given. Cite evidence by its id "
        "in square brackets, like [E1]. Do not cite anything else. If the evidence is insufficient, say so."
    )
    prose = llm.complete(system, f"Question: {question}\n\nEvidence:\n{evidence}")
    valid = {f["id"] for f in findings}
    used: list[str] = []
    dropped: list[str] = []
    for ref in _EVIDENCE_REF.findall(prose):
        (used if ref in valid else dropped).append(ref)
    for bad in set(dropped):
        prose = prose.replace(f"[{bad}]", "")
    # Anything that looks like a path:line citation the model made up is removed as well.
    invented = re.findall(r"[\w./-]+:L\d+(?:-L?\d+)?@[0-9a-f]{7,40}", prose)
    allowed = {f["citation"] for f in findings}
    for c in invented:
        if c not in allowed:
            dropped.append(c)
            prose = prose.replace(c, "")
    return prose.strip(), sorted(set(used), key=lambda s: int(s[1:])), sorted(set(dropped))
