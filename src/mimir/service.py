"""Mimir as a library: every MCP tool and REST endpoint is one method here."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.cache import JsonCache, cache_key
from lens.engine import check_allowed
from mimir.bundle import extract_bundle
from mimir.config import MimirSettings
from mimir.errors import BadRequest, NotFound, UnknownIndex
from mimir.lensclient import LensBackend, LensUnavailable
from mimir.pipeline import research_db
from mimir.pipeline.manager import IndexManager
from mimir.pipeline.run import index_dir, lens_backend, log_path
from mimir.research.ask import ask_index
from mimir.research.citations import cite, parse_citation, span_sha256
from mimir.research.evidence import Degradation, IndexEvidence
from mimir.research.llm import LLMClient, llm_from_settings
from mimir.research.repomap import render_from_db
from mimir.research.search import search_repo
from mimir.serve import metrics
from mimir.store import IndexRecord
from mimir.store.querylog import record_query


class Mimir:
    def __init__(
        self,
        settings: MimirSettings | None = None,
        *,
        lens: LensBackend | None = None,
        llm: LLMClient | None = None,
    ) -> None:
        self.settings = settings or MimirSettings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.manager = IndexManager(self.settings)
        self.store = self.manager.store
        self.lens = lens or lens_backend(self.settings)
        self.llm = llm if llm is not None else llm_from_settings(self.settings)
        self._evidence: dict[tuple[str, float], IndexEvidence] = {}
        # "search"/"ask" -> result cache; empty (no caching) until a server installs them at start.
        self.result_caches: dict[str, JsonCache] = {}

    def close(self) -> None:
        self.manager.close()
        self.store.close()

    # -- indexing ---------------------------------------------------------------------
    def ensure_repo_index(self, path: str, rev: str = "HEAD", force: bool = False) -> dict[str, Any]:
        rec, run = self.manager.ensure(path, rev, force)
        active = run is not None and run.state in ("queued", "running")
        return {
            "index_id": rec.index_id,
            "status": rec.status,
            "commit": rec.commit,
            "reused": rec.status == "ready" and not active,
            "run": run.to_dict() if run else None,
        }

    def index_status(self, index_id: str) -> dict[str, Any]:
        return self.manager.status(index_id)

    def cancel(self, index_id: str) -> dict[str, Any]:
        return {"index_id": index_id, "run": self.manager.cancel(index_id).to_dict()}

    def job(self, run_id: str) -> dict[str, Any]:
        return self.store.get_run(run_id).to_dict()

    def list_indexes(self) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.to_dict().items() if k != "manifest"}
            | {"counts": (r.manifest or {}).get("counts")}
            for r in self.store.list_indexes()
        ]

    def manifest(self, index_id: str) -> dict[str, Any]:
        path = index_dir(self.settings, index_id) / "manifest.json"
        self.store.get_index(index_id)
        if not path.exists():
            raise NotFound(
                f"index {index_id!r} has no manifest yet (not ready)", details={"index_id": index_id}
            )
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def log(self, index_id: str, max_bytes: int = 64_000) -> str:
        rec = self.store.get_index(index_id)
        if not rec.latest_run:
            return ""
        path = log_path(self.settings, rec.latest_run)
        if not path.exists():
            return ""
        data = path.read_bytes()
        return data[-max_bytes:].decode("utf-8", "replace")

    def get_repo_bundle(self, index_id: str) -> dict[str, Any]:
        manifest = self.manifest(index_id)
        path = index_dir(self.settings, index_id) / "bundle.tar.zst"
        return {
            "index_id": index_id,
            "path": str(path),
            **manifest.get("bundle", {}),
            "uri": f"mimir://indexes/{index_id}/bundle",
        }

    def import_bundle(self, bundle_path: str) -> dict[str, Any]:
        """Make another Mimir's bundle searchable here, offline: research data plus its Lens shard."""
        bundle = check_allowed(Path(bundle_path), self.settings.roots())
        if not bundle.is_file():
            raise BadRequest(f"bundle {bundle_path!r} is not a file", details={"path": bundle_path})
        staging = self.settings.data_dir / "indexes" / f".import-{uuid.uuid4().hex}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        manifest = extract_bundle(bundle, staging, max_total_bytes=self.settings.max_bundle_bytes)
        try:
            index_id = str(manifest["index_id"])
            target = index_dir(self.settings, index_id)
            if target.exists():
                return {
                    "index_id": index_id,
                    "status": self.store.get_index(index_id).status,
                    "imported": False,
                }
            shard = staging / "lens-shard.sqlite"
            if not shard.exists():
                raise BadRequest("bundle has no Lens shard: it cannot be searched offline", details={})
            self.lens.import_shard(str(manifest["lens_repo"]), shard)
            shard.unlink()
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        now = time.time()
        root = str(manifest.get("root") or "")
        self.store.upsert_index(
            IndexRecord(
                index_id=index_id,
                repo=Path(root).name or index_id,
                root=root,
                rev=manifest.get("rev"),
                commit=manifest.get("commit"),
                lens_repo=str(manifest["lens_repo"]),
                status="ready",
                latest_run=None,
                created_at=now,
                updated_at=now,
            )
        )
        self.store.set_index_status(index_id, "ready", manifest)
        return {"index_id": index_id, "status": "ready", "imported": True, "commit": manifest.get("commit")}

    # -- research ---------------------------------------------------------------------
    def evidence(self, index_id: str) -> IndexEvidence:
        rec = self.store.get_index(index_id)
        key = (index_id, rec.updated_at)
        ev = self._evidence.get(key)
        if ev is None:
            d = index_dir(self.settings, index_id)
            if not (d / "research.sqlite").exists():
                raise UnknownIndex(
                    f"index {index_id!r} is not ready (status {rec.status}); poll index_status",
                    details={"index_id": index_id, "status": rec.status},
                )
            ev = IndexEvidence(rec, d, self.lens)
            self._evidence = {k: v for k, v in self._evidence.items() if k[0] != index_id}
            self._evidence[key] = ev
        return ev

    def _cached(
        self, kind: str, ev: IndexEvidence, compute: Callable[[], dict[str, Any]], args: list[Any]
    ) -> dict[str, Any]:
        """``compute()`` through the ``kind`` result cache, when installed; degraded answers are never stored.

        The key holds the index's generation (updated_at, latest_run), so a re-index invalidates.
        """
        cache = self.result_caches.get(kind)
        if cache is None:
            return compute()
        rec = ev.record
        key = cache_key(kind, rec.index_id, rec.updated_at, rec.latest_run, args)
        out: dict[str, Any] = cache.get_or_compute(key, compute, cacheable=lambda v: not v.get("degraded"))
        return out

    def search_repo(
        self,
        index_id: str,
        query: str,
        k: int = 20,
        mode: str = "hybrid",
        context_lines: int = 5,
        token_budget: int | None = None,
        principal: str | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if not query.strip():
            raise BadRequest("query must not be empty", details={"query": query})
        if not 1 <= k <= 200:
            raise BadRequest("k must be between 1 and 200", details={"k": k})
        if not 0 <= context_lines <= 50:
            raise BadRequest(
                "context_lines must be between 0 and 50", details={"context_lines": context_lines}
            )
        ev = self.evidence(index_id)
        result = self._cached(
            "search",
            ev,
            lambda: search_repo(
                ev, query, k=k, mode=mode, context_lines=context_lines, token_budget=token_budget
            ),
            [query, k, mode, context_lines, token_budget],
        )
        metrics.SEARCHES.labels(mode=mode).inc()
        record_query(self.store, "search", index_id, query, k, started, result, principal)
        return result

    def ask_index(
        self,
        index_id: str,
        question: str,
        max_hops: int = 3,
        token_budget: int | None = None,
        principal: str | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if not question.strip():
            raise BadRequest("question must not be empty", details={"question": question})
        ev = self.evidence(index_id)
        llm = [self.llm.provider, self.llm.url, self.llm.model] if self.llm is not None else None
        answer = self._cached(
            "ask",
            ev,
            lambda: ask_index(ev, question, max_hops=max_hops, token_budget=token_budget, llm=self.llm),
            [question, max_hops, token_budget, llm],
        )
        metrics.ASKS.inc()
        record_query(self.store, "ask", index_id, question, None, started, answer, principal)
        return answer

    def find_symbol(self, index_id: str, name: str, limit: int = 20) -> dict[str, Any]:
        ev = self.evidence(index_id)
        syms = ev.symbols_named(name, limit=limit)
        return {
            "index_id": index_id,
            "name": name,
            "symbols": [
                s.to_dict() | {"citation": cite(s.path, s.start_line, s.end_line, ev.commit)} for s in syms
            ],
        }

    def find_references(self, index_id: str, symbol: str, limit: int = 100) -> dict[str, Any]:
        ev = self.evidence(index_id)
        refs = ev.references(symbol, limit=limit)
        callers: list[dict[str, Any]] = []
        for sym in ev.symbols_named(symbol, limit=5):
            for caller, resolution in ev.neighbors(sym.id, "calls", reverse=True, limit=50):
                callers.append(
                    {
                        "caller": caller.to_dict(),
                        "callee": sym.id,
                        "resolution": resolution,
                        "citation": cite(caller.path, caller.start_line, caller.end_line, ev.commit),
                    }
                )
        for r in refs:
            r["citation"] = cite(r["path"], r["line"], r["line"], ev.commit)
        return {"index_id": index_id, "symbol": symbol, "references": refs, "callers": callers}

    def read_span(self, index_id: str, path: str, start: int, end: int) -> dict[str, Any]:
        if start < 1 or end < start:
            raise BadRequest("need 1 <= start <= end", details={"start": start, "end": end})
        if end - start > 2000:
            raise BadRequest("span too long (at most 2000 lines)", details={"start": start, "end": end})
        ev = self.evidence(index_id)
        deg = Degradation()
        span = ev.span(path, start, end, 0, deg)
        if span is None:
            if deg.degraded:
                return {
                    "index_id": index_id,
                    "path": path,
                    "lines": [],
                    **deg.to_dict(),
                    "message": "Lens is unavailable and no stored snippet covers this span",
                }
            raise NotFound(f"{path}:{start}-{end} is not in index {index_id!r}", details={"path": path})
        return {"index_id": index_id, **span, "lines": span["snippet"]["lines"], **deg.to_dict()}

    def repo_map(self, index_id: str, token_budget: int = 2048) -> dict[str, Any]:
        if token_budget < 64:
            raise BadRequest("token_budget must be at least 64", details={"token_budget": token_budget})
        ev = self.evidence(index_id)
        return {"index_id": index_id, **render_from_db(ev.db(), token_budget)}

    def verify_citation(self, citation: str, sha256: str | None = None) -> dict[str, Any]:
        """Compare a citation with the file as it is now in the indexed repository's directory."""
        c = parse_citation(citation)
        records = self.store.indexes_for_commit(c.commit) if c.commit != "worktree" else []
        if not records:
            records = [r for r in self.store.list_indexes() if r.commit and r.commit.startswith(c.commit)]
        if not records:
            raise NotFound(f"no index knows commit {c.commit}", details={"citation": citation})
        rec = records[0]
        expected = sha256
        if expected is None:
            ev = self.evidence(rec.index_id)
            deg = Degradation()
            at_commit = ev.read_lines(c.path, c.start, c.end, deg)
            if at_commit is None:
                return {
                    "citation": citation,
                    "status": "invalid",
                    "reason": "no such span at that commit",
                    **deg.to_dict(),
                }
            expected = span_sha256(at_commit[0])
        current = Path(rec.root) / c.path
        try:
            resolved = current.resolve()
            if not resolved.is_relative_to(Path(rec.root).resolve()):
                raise BadRequest("citation path escapes the repository", details={"citation": citation})
            lines = resolved.read_text(encoding="utf-8", errors="replace").split("\n")
        except FileNotFoundError:
            return {
                "citation": citation,
                "status": "stale",
                "reason": "file no longer exists",
                "expected_sha256": expected,
                "current_sha256": None,
            }
        cur = lines[c.start - 1 : c.end]
        current_sha = span_sha256(cur) if len(cur) == c.end - c.start + 1 else None
        status = "valid" if current_sha == expected else "stale"
        return {
            "citation": citation,
            "status": status,
            "expected_sha256": expected,
            "current_sha256": current_sha,
            "index_id": rec.index_id,
            "reason": None if status == "valid" else "the cited lines changed",
        }

    def lens_status(self) -> dict[str, Any]:
        try:
            return self.lens.status()
        except LensUnavailable as exc:
            return {"reachable": False, "error": str(exc)}


__all__ = ["Mimir", "research_db"]
