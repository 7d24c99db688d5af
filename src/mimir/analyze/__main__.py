"""Performance check and debugging aid: ``python -m mimir.analyze ROOT [--lang python] [--map 1024]``.

Reads the source files under ROOT (the only I/O in this package), runs :func:`analyze_repository`
and prints per-phase wall and CPU seconds, graph sizes and, with ``--map``, the repo map.  It is a
tool for measuring, not part of the server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter

from lens.discover.language import detect_language
from lens.parse import treesitter
from mimir.analyze import analyze_repository, render_repo_map
from mimir.analyze.model import SourceFile

_SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", "target", "build", "dist"})


def read_tree(root: str, langs: set[str] | None) -> list[SourceFile]:
    """Source files under ``root`` with a tree-sitter language (and ``go.mod`` files), sorted."""
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            lang = detect_language(rel)
            if name != "go.mod" and (not treesitter.supports(lang) or (langs and lang not in langs)):
                continue
            try:
                with open(full, encoding="utf-8", errors="replace") as fh:
                    files.append(SourceFile(rel, lang, fh.read()))
            except OSError:
                continue
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimir.analyze", description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--lang", action="append", help="only these languages (repeatable)")
    parser.add_argument(
        "--map", type=int, default=0, metavar="TOKENS", help="print a repo map of this budget"
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    files = read_tree(args.root, set(args.lang) if args.lang else None)
    read_s = time.perf_counter() - t0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    analysis = analyze_repository(files)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    graph = analysis.graph
    edge_counts = {kind: sum(len(v) for v in by_src.values()) for kind, by_src in graph.adjacency.items()}
    resolutions = Counter(
        e.resolution
        for kind in ("calls", "inherits", "references")
        for es in graph.adjacency[kind].values()
        for e in es
    )
    report = {
        "files": len(files),
        "bytes": sum(len(f.text) for f in files),
        "read_s": round(read_s, 3),
        "wall_s": analysis.durations,
        "cpu_s": analysis.cpu_durations,
        "end_to_end_wall_s": round(wall, 3),
        "end_to_end_cpu_s": round(cpu, 3),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "definitions": sum(len(v) for v in analysis.definitions.values()),
        "import_edges": len(analysis.imports.edges),
        "unresolved_imports": len(analysis.imports.unresolved),
        "references": len(analysis.references),
        "reference_kinds": dict(Counter(r.kind for r in analysis.references)),
        "edges": edge_counts,
        "resolutions": {str(k): v for k, v in resolutions.items()},
        "graph_json_mb": round(len(json.dumps(graph.to_dict())) / 1e6, 1),
        "top_files": list(analysis.ranks.files)[:10],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    if args.map:
        repo_map = render_repo_map(graph, analysis.ranks, args.map)
        print(f"\n--- repo map: {repo_map.tokens} tokens, truncated={repo_map.truncated} ---")
        sys.stdout.write(repo_map.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
