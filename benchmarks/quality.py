"""Retrieval quality of search_repo per mode, on queries mined from real corpora.

Each query is the first sentence of a function's docstring (Python) or doc comment
(Go, with the leading function name removed); the target is that function. The
indexed copy has every docstring/doc comment removed (line numbers kept), so the
query text cannot be found verbatim. A result is relevant when its span contains
the target's definition line. Reports Recall@1, Recall@10, MRR and nDCG@10 for
exact, ranked, semantic and hybrid.

    python benchmarks/quality.py --corpus django --corpus sympy --corpus go-std --queries 150
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FETCH = ROOT.parent / "shared" / "corpora" / "fetch.sh"
MODES = ("exact", "ranked", "semantic", "hybrid")
GO_DIRS = (  # under the Go source root (share/go-1.19 in the Debian package)
    "src/net/http",
    "src/strings",
    "src/bytes",
    "src/strconv",
    "src/encoding/json",
    "src/sort",
    "src/time",
    "src/bufio",
    "src/io",
    "src/os",
)
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


@dataclass(frozen=True)
class Target:
    query: str
    path: str
    line: int
    name: str


def first_sentence(doc: str) -> str:
    text = " ".join(doc.strip().split())
    m = _SENTENCE.match(text)
    return (m.group(1) if m else text)[:300]


def mine_python(root: Path, files: list[Path]) -> tuple[list[Target], dict[str, str]]:
    """Targets from docstrings, and each file's text with all docstrings replaced by ``pass``."""
    targets: list[Target] = []
    stripped: dict[str, str] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            text = f.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = text.split("\n")
        spans: list[tuple[int, int]] = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if not (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                continue
            doc = body[0]
            assert doc.end_lineno is not None
            spans.append((doc.lineno, doc.end_lineno))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                q = first_sentence(body[0].value.value)
                if len(q.split()) >= 4:
                    targets.append(Target(q, rel, node.lineno, node.name))
        for start, end in spans:
            indent = re.match(r"\s*", lines[start - 1]).group(0)  # type: ignore[union-attr]
            lines[start - 1] = indent + "pass"
            for i in range(start, end):
                lines[i] = ""
        stripped[rel] = "\n".join(lines)
    return targets, stripped


_GO_FUNC = re.compile(r"^func (?:\([^)]*\) )?([A-Za-z_]\w*)")


def mine_go(root: Path, files: list[Path]) -> tuple[list[Target], dict[str, str]]:
    targets: list[Target] = []
    stripped: dict[str, str] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            lines = f.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError:
            continue
        out = list(lines)
        for i, line in enumerate(lines):
            m = _GO_FUNC.match(line)
            if not m:
                continue
            j = i
            while j > 0 and lines[j - 1].startswith("//"):
                j -= 1
            if j == i:
                continue
            doc = " ".join(ln[2:].strip() for ln in lines[j:i])
            name = m.group(1)
            if doc.startswith(name + " "):
                doc = doc[len(name) + 1 :]
            q = first_sentence(doc)
            if name[0].isupper() and len(q.split()) >= 4:
                targets.append(Target(q, rel, i + 1, name))
            for k in range(j, i):
                out[k] = ""
        stripped[rel] = "\n".join(out)
    return targets, stripped


def fetch(name: str) -> Path:
    out = subprocess.run(["bash", str(FETCH), name], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def build_copy(
    name: str, src: Path, dest: Path, max_files: int, n_queries: int, rng: random.Random
) -> list[Target]:
    if name == "go-std":
        go_root = next((p.parent.parent for p in src.rglob("src/go.mod")), src)
        files = [
            p
            for d in GO_DIRS
            for p in sorted((go_root / d).rglob("*.go"))
            if not p.name.endswith("_test.go") and "/testdata/" not in p.as_posix()
        ]
        targets, stripped = mine_go(src, files)
    else:
        files = sorted(
            p for p in src.rglob("*.py") if "/tests/" not in p.as_posix() and "/test_" not in p.name
        )
        targets, stripped = mine_python(src, files)
    rng.shuffle(targets)
    chosen = targets[:n_queries]
    keep = {t.path for t in chosen}
    others = [p for p in sorted(stripped) if p not in keep]
    rng.shuffle(others)
    keep.update(others[: max(0, max_files - len(keep))])
    for rel in sorted(keep):
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(stripped[rel], encoding="utf-8")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "q",
        "GIT_AUTHOR_EMAIL": "q@q",
        "GIT_COMMITTER_NAME": "q",
        "GIT_COMMITTER_EMAIL": "q@q",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(dest)], check=True, env=env)
    subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(dest), "-c", "commit.gpgsign=false", "commit", "-qm", "corpus"], check=True, env=env
    )
    return chosen


def rank_of(results: list[dict[str, object]], t: Target) -> int | None:
    for i, r in enumerate(results, start=1):
        if r["path"] == t.path and int(r["start_line"]) <= t.line <= int(r["end_line"]):  # type: ignore[call-overload]
            return i
    return None


def score_mode(mimir: object, index_id: str, targets: list[Target], mode: str) -> dict[str, float]:
    ranks: list[int | None] = []
    lat: list[float] = []
    for t in targets:
        s = time.perf_counter()
        res = mimir.search_repo(index_id, t.query, k=10, mode=mode, context_lines=0)  # type: ignore[attr-defined]
        lat.append(time.perf_counter() - s)
        ranks.append(rank_of(res["results"], t))
    n = len(ranks)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@10": sum(1 for r in ranks if r is not None) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
        "ndcg@10": sum(1 / math.log2(r + 1) for r in ranks if r) / n,
        "p50_ms": statistics.median(lat) * 1000,
    }


def tune(mimir: object, index_id: str, targets: list[Target]) -> dict[str, float]:
    """Grid search over fusion weights on this corpus's queries; applies and returns the best."""
    from mimir.research import search

    best: tuple[float, dict[str, float]] = (-1.0, dict(search.WEIGHTS))
    for exact in (0.0, 0.3, 0.6):
        for semantic in (1.0, 1.5, 2.0, 3.0):
            for symbol in (0.3, 0.6, 1.0):
                for graph in (0.0, 0.3):
                    weights = {
                        "exact": exact,
                        "bm25": 1.0,
                        "semantic": semantic,
                        "symbol": symbol,
                        "graph": graph,
                    }
                    search.WEIGHTS.update(weights)
                    ndcg = score_mode(mimir, index_id, targets, "hybrid")["ndcg@10"]
                    if ndcg > best[0]:
                        best = (ndcg, dict(weights))
    search.WEIGHTS.update(best[1])
    print(f"tuned on this corpus: nDCG@10 {best[0]:.3f} with weights {best[1]}", flush=True)
    return best[1]


def evaluate(name: str, src: Path, args: argparse.Namespace, do_tune: bool) -> dict[str, object]:
    from mimir.config import MimirSettings
    from mimir.research import search
    from mimir.service import Mimir

    rng = random.Random(args.seed)
    work = args.work_dir / name if args.work_dir else Path(tempfile.mkdtemp(prefix=f"quality-{name}-"))
    try:
        tree = work / name
        targets_file = work / "targets.json"
        if targets_file.exists():
            targets = [Target(**t) for t in json.loads(targets_file.read_text())]
        else:
            work.mkdir(parents=True, exist_ok=True)
            targets = build_copy(name, src, tree, args.max_files, args.queries, rng)
            targets_file.write_text(json.dumps([t.__dict__ for t in targets]))
        settings = MimirSettings(data_dir=work / "data", allowed_roots=str(work))
        mimir = Mimir(settings)
        t0 = time.perf_counter()
        out = mimir.ensure_repo_index(str(tree))
        run = out["run"]
        if run is not None and run["state"] != "succeeded":
            done = mimir.manager.wait(run["run_id"])
            if done.state != "succeeded":
                raise RuntimeError(f"indexing {name} failed: {done.error}")
        index_seconds = time.perf_counter() - t0
        tuned = tune(mimir, out["index_id"], targets) if do_tune else None
        stats = {mode: score_mode(mimir, out["index_id"], targets, mode) for mode in MODES}
        mimir.close()
        return {
            "corpus": name,
            "queries": len(targets),
            "files": len(list(tree.rglob("*.*"))),
            "index_seconds": round(index_seconds, 1),
            "modes": stats,
            "tuned_weights": tuned,
            "weights": dict(search.WEIGHTS),
        }
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", help="django, sympy, go-std (repeatable)")
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument(
        "--max-files", type=int, default=600, help="files indexed per corpus (targets' files first)"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--work-dir", type=Path, help="keep corpora copies and indexes here (reused when present)"
    )
    ap.add_argument("--tune", action="store_true", help="grid-search fusion weights on the FIRST corpus only")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    corpora = args.corpus or ["django", "sympy", "go-std"]
    print(
        f"# quality: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n# command: {' '.join(sys.argv)}"
    )
    rows = []
    for i, name in enumerate(corpora):
        res = evaluate(name, fetch(name), args, do_tune=args.tune and i == 0)
        rows.append(res)
        print(
            f"\n{name}: {res['queries']} queries, {res['files']} files, indexed in {res['index_seconds']} s"
        )
        print(f"{'mode':<9} {'R@1':>6} {'R@10':>6} {'MRR':>6} {'nDCG@10':>8} {'p50 ms':>7}")
        for mode, m in res["modes"].items():  # type: ignore[attr-defined]
            print(
                f"{mode:<9} {m['recall@1']:6.3f} {m['recall@10']:6.3f} {m['mrr']:6.3f} {m['ndcg@10']:8.3f} "
                f"{m['p50_ms']:7.1f}"
            )
        best_single = max(m["ndcg@10"] for k, m in res["modes"].items() if k != "hybrid")  # type: ignore[attr-defined]
        hyb = res["modes"]["hybrid"]["ndcg@10"]  # type: ignore[index]
        print(
            f"hybrid vs best single mode (nDCG@10): {hyb:.3f} vs {best_single:.3f} -> "
            f"{'hybrid wins' if hyb > best_single else 'HYBRID DOES NOT WIN'}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
