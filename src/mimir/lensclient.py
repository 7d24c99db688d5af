"""How Mimir talks to Lens: in-process (the default) or over HTTP, behind one interface.

Both backends raise the same exceptions, so Mimir code never cares which one runs:

- :class:`LensRequestError` -- Lens understood the request and refused it (bad query,
  unknown repository, path not allowed, ...); carries Lens's ``code``/``message``/
  ``status``. Retrying will not help.
- :class:`LensUnavailable` -- Lens could not answer (connection refused, timeout, 5xx);
  :class:`CircuitOpen` is the fast-fail variant while the circuit breaker is open.
- :class:`Cancelled` -- ``index()`` stopped because ``should_stop()`` said so.

The HTTP client retries idempotent calls only (GET, and POST /api/v1/search and
/api/v1/repos/{name}/spans, which are read-only) on connection errors, timeouts and
502/503/504, with exponential backoff and full jitter; it never retries POST
/api/v1/repos (that would queue a second job). Every HTTP call goes through a
:class:`~mimir.breaker.CircuitBreaker`; 4xx answers prove Lens is alive, so they count
as breaker successes.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from infra.observability import tracing
from lens.config import LensSettings
from lens.engine import Lens
from lens.errors import (
    BadRequest,
    Conflict,
    LensError,
    NotFound,
    PathNotAllowed,
    QuerySyntaxError,
    SourceError,
    Unauthorized,
)
from lens.index.catalog import validate_name
from lens.index.embedder import Embedder
from mimir import breaker as breakerlib
from mimir.breaker import CircuitBreaker
from mimir.errors import LensDown, RunCancelled
from mimir.serve import metrics

ProgressFn = Callable[[str, int, int], None]
StopFn = Callable[[], bool]
Outcome = Literal["ok", "error", "unavailable", "rejected_open"]
CallHook = Callable[[str, Outcome, float, int], None]

_RETRY_STATUSES = frozenset({502, 503, 504})
_CODE_STATUS = {
    cls.code: cls.status
    for cls in (QuerySyntaxError, BadRequest, NotFound, PathNotAllowed, Unauthorized, Conflict, SourceError)
}


# -- errors ---------------------------------------------------------------------------
class LensUnavailable(LensDown):
    """Lens could not be reached or failed server-side (after retries, where allowed)."""


class CircuitOpen(LensUnavailable, breakerlib.CircuitOpen):
    """The breaker is open: the call was refused without contacting Lens."""

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message, details={"retry_after": round(retry_after, 3)})
        self.retry_after = retry_after


class LensRequestError(LensError):
    """Lens rejected the request (4xx, or a failed index job); ``code`` is Lens's error code."""

    def __init__(
        self, code: str, message: str, status: int, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Cancelled(RunCancelled):
    """``index()`` gave up because ``should_stop()`` returned true."""


class NotSupported(LensError):
    """The operation needs Lens's data directory, which only the in-process backend has."""

    code = "not_supported"
    status = 501


_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar("mimir_lens_fallback", default=False)


@contextmanager
def fallback_ready() -> Iterator[None]:
    """Lens calls in this block have a fallback: their failures count as ``fallback`` in metrics.

    Wrap the call where a caller catches :class:`LensUnavailable` and answers from stored
    data instead, so ``mimir_lens_calls_total`` counts every call exactly once.
    """
    token = _FALLBACK.set(True)
    try:
        yield
    finally:
        _FALLBACK.reset(token)


# -- the interface ----------------------------------------------------------------------
class LensBackend(Protocol):
    """Everything Mimir needs from Lens."""

    def index(
        self,
        path: Path,
        name: str,
        *,
        rev: str | None,
        seed: str | None,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> dict[str, Any]:
        """Index ``path`` as ``name`` and compute embeddings; return the report (+ ``embedded``).

        Blocks until both are done; raises :class:`Cancelled` when ``should_stop()`` turns true.
        """
        ...

    def search(
        self,
        query: str,
        *,
        mode: str,
        limit: int,
        context: int,
        repos: list[str] | None,
        timeout_ms: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """``SearchResult.to_dict()``."""
        ...

    def read_file(self, repo: str, path: str, start: int | None, end: int | None) -> dict[str, Any]: ...

    def read_spans(self, repo: str, spans: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
        """Many ``(path, start, end)`` ranges in one call, from one snapshot (``Lens.read_spans``).

        ``{"repo", "commit", "spans": [...]}``; each item is what ``read_file`` answers for that
        range, or carries ``error: {"code", "message", "details"}`` (``not_found``, ``bad_request``).
        """
        ...

    def symbols(
        self, repo: str, q: str, *, kind: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]: ...

    def repo(self, name: str) -> dict[str, Any]: ...

    def import_shard(self, name: str, shard_path: Path) -> None:
        """Publish a shard file (e.g. from a bundle) as repository ``name``."""
        ...

    def shard_path(self, name: str) -> Path | None:
        """The live shard file when Lens runs in-process; None over HTTP."""
        ...

    def status(self) -> dict[str, Any]:
        """``reachable``, ``mode``, ``url``/``data_dir``, ``breaker`` state, ``latency_ms``."""
        ...


# -- in-process -------------------------------------------------------------------------
def _request_error(exc: LensError) -> LensRequestError:
    return LensRequestError(exc.code, exc.message, exc.status, details=exc.details)


class InProcessLens(LensBackend):
    """Lens as a library in this process: no network, no breaker, errors translated.

    Lens errors become :class:`LensRequestError` so callers handle one set of types.
    """

    mode = "in_process"

    def __init__(self, lens: Lens) -> None:
        self.lens = lens

    @classmethod
    def from_data_dir(
        cls,
        data_dir: Path,
        *,
        embed: bool = True,
        embedder_factory: Callable[[], Embedder] | None = None,
    ) -> InProcessLens:
        settings = LensSettings(data_dir=data_dir, embed=embed)
        return cls(Lens(settings, embedder_factory=embedder_factory))

    def index(
        self,
        path: Path,
        name: str,
        *,
        rev: str | None,
        seed: str | None,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> dict[str, Any]:
        stop = should_stop or (lambda: False)

        def report(stage: str, done: int, total: int) -> None:
            # Raising here aborts the build: the builder rolls back and nothing is published.
            if stop():
                raise Cancelled(f"indexing {name!r} cancelled during {stage}")
            if progress is not None:
                progress(stage, done, total)

        try:
            result = self.lens.index(path, name=name, rev=rev, progress=report, seed=seed).to_dict()
            embedded = self.lens.embed(
                name, progress=lambda done, total: report("embed", done, total), should_stop=stop
            )
        except Cancelled:
            raise
        except LensError as exc:
            raise _request_error(exc) from exc
        if stop():
            raise Cancelled(f"indexing {name!r} cancelled during embed (lexical index is live)")
        if progress is not None:
            progress("done", 1, 1)
        result["embedded"] = embedded
        return result

    def search(
        self,
        query: str,
        *,
        mode: str,
        limit: int,
        context: int,
        repos: list[str] | None,
        timeout_ms: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        try:
            result = self.lens.search(
                query,
                mode=mode,
                limit=limit,
                context=context,
                cursor=cursor,
                timeout_ms=timeout_ms or self.lens.settings.search_timeout_ms,
                repos=repos,
            )
        except LensError as exc:
            raise _request_error(exc) from exc
        return result.to_dict()

    def read_file(self, repo: str, path: str, start: int | None, end: int | None) -> dict[str, Any]:
        try:
            return self.lens.read_file(repo, path, start, end)
        except LensError as exc:
            raise _request_error(exc) from exc

    def read_spans(self, repo: str, spans: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
        try:
            return self.lens.read_spans(repo, spans)
        except LensError as exc:
            raise _request_error(exc) from exc

    def symbols(self, repo: str, q: str, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        try:
            return self.lens.symbols(repo, q, kind=kind, limit=limit)
        except LensError as exc:
            raise _request_error(exc) from exc

    def repo(self, name: str) -> dict[str, Any]:
        try:
            return self.lens.repo(name)
        except LensError as exc:
            raise _request_error(exc) from exc

    def import_shard(self, name: str, shard_path: Path) -> None:
        try:
            self.lens.catalog.import_shard(name, shard_path)
        except LensError as exc:
            raise _request_error(exc) from exc

    def shard_path(self, name: str) -> Path | None:
        try:
            return self.lens.catalog.current_shard(name)
        except LensError as exc:
            raise _request_error(exc) from exc

    def status(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            repos = len(self.lens.catalog.names())
            reachable, error = True, None
        except OSError as exc:
            repos, reachable, error = 0, False, str(exc)
        return {
            "mode": self.mode,
            "reachable": reachable,
            "data_dir": str(self.lens.settings.data_dir),
            "breaker": None,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "repos": repos,
            "error": error,
        }


# -- over HTTP --------------------------------------------------------------------------
class _Stats:
    """Per-operation call counters, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, dict[str, float]] = {}

    def add(self, op: str, outcome: Outcome, seconds: float, retries: int) -> None:
        with self._lock:
            s = self._ops.setdefault(
                op,
                {
                    "calls": 0,
                    "ok": 0,
                    "error": 0,
                    "unavailable": 0,
                    "rejected_open": 0,
                    "retries": 0,
                    "seconds_total": 0.0,
                    "seconds_max": 0.0,
                    "last_seconds": 0.0,
                },
            )
            s["calls"] += 1
            s[outcome] += 1
            s["retries"] += retries
            s["seconds_total"] += seconds
            s["seconds_max"] = max(s["seconds_max"], seconds)
            s["last_seconds"] = seconds

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {op: dict(s) for op, s in self._ops.items()}


def _quote_path(path: str) -> str:
    """URL-encode a file path, keeping '/' but encoding dot segments httpx would normalize away."""
    return "/".join(
        "%2E" * len(seg) if seg in (".", "..") else quote(seg, safe="") for seg in path.split("/")
    )


class HttpLens(LensBackend):
    """A Lens server over HTTP: timeouts, bounded retries with jitter, a circuit breaker, stats."""

    mode = "http"

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        poll_interval: float = 0.2,
        breaker: CircuitBreaker | None = None,
        on_call: CallHook | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # A comma-separated list of searcher replicas: each call goes to the replica with the fewest
        # calls in flight (ties rotate per operation, so one search's file reads cannot keep every
        # search on the same replica), and fails over to the next replica (connection error, 5xx)
        # before the breaker hears of a failure.
        self.replicas = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()] or [base_url]
        self.base_url = ",".join(self.replicas)
        self._turns: dict[str, itertools.count[int]] = collections.defaultdict(itertools.count)
        self._in_flight = [0] * len(self.replicas)
        self._flight_lock = threading.Lock()
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self.breaker = breaker or CircuitBreaker(name="lens")
        metrics.watch_breaker(self.breaker)
        self.on_call = on_call
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        headers = {"Accept": "application/json", "User-Agent": "mimir-lensclient"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.replicas[0],
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
            follow_redirects=False,
        )
        self._stats = _Stats()
        self._rng = random.Random()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpLens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Per-operation counters plus the breaker's."""
        return {"operations": self._stats.snapshot(), "breaker": self.breaker.counters()}

    # -- the core request loop ------------------------------------------------------------
    def _first_target(self, op: str, n: int) -> int:
        """The least busy of the first ``n`` replicas, ties broken by this operation's rotation."""
        start = next(self._turns[op]) % n
        with self._flight_lock:
            loads = self._in_flight[:n]
        return min(((start + i) % n for i in range(n)), key=lambda r: loads[r])

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] -- spreads retry storms."""
        return self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))

    def _request(
        self,
        op: str,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        retry: bool = True,
        timeout: httpx.Timeout | None = None,
        pinned: bool = False,
    ) -> Any:
        """``pinned``: the first replica only (index jobs live on the server that queued them)."""
        started = time.perf_counter()
        retries = 0
        outcome: Outcome = "unavailable"
        settled = False  # the breaker heard this call's verdict
        # A client span; its id travels in traceparent, so Lens's server span is its child.
        span = tracing.tracer().start_span(
            f"lens {op}",
            kind=SpanKind.CLIENT,
            attributes={"mimir.lens.operation": op, "http.request.method": method, "url.path": url},
        )
        span_token = otel_context.attach(trace.set_span_in_context(span))
        try:
            try:
                self.breaker.allow()
            except breakerlib.CircuitOpen as exc:
                settled, outcome = True, "rejected_open"
                raise CircuitOpen(
                    f"Lens at {self.base_url} is unavailable (circuit open); {exc}",
                    retry_after=exc.retry_after,
                ) from None
            targets = self.replicas[:1] if pinned else self.replicas
            n = len(targets)
            first = self._first_target(op, n)
            # Non-idempotent calls move on only when the request surely never left (connect error).
            attempts = max(self.max_attempts, n) if retry else n
            problem = ""
            for attempt in range(attempts):
                if attempt:
                    if attempt % n == 0:  # every replica had its turn: back off before the next round
                        time.sleep(self._backoff(attempt // n - 1))
                    retries += 1
                replica = (first + attempt) % n
                target = targets[replica]
                with self._flight_lock:
                    self._in_flight[replica] += 1
                try:
                    resp = self._client.request(
                        method,
                        target + url,
                        params=params,
                        json=json,
                        headers=tracing.inject_headers(),
                        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                    )
                except httpx.TimeoutException as exc:
                    problem = f"timed out ({type(exc).__name__})"
                    if retry:
                        continue
                    break
                except httpx.RequestError as exc:
                    problem = f"connection failed ({type(exc).__name__}: {exc})"
                    if retry or isinstance(exc, httpx.ConnectError):
                        continue
                    break
                finally:
                    with self._flight_lock:
                        self._in_flight[replica] -= 1
                if resp.status_code >= 500:
                    problem = f"HTTP {resp.status_code}: {_error_message(resp)}"
                    if retry and (resp.status_code in _RETRY_STATUSES or attempt + 1 < n):
                        continue
                    break
                # Lens answered: whatever it said, it is alive.
                settled = True
                self.breaker.record_success()
                if resp.status_code >= 400:
                    outcome = "error"
                    raise _http_error(resp)
                try:
                    body = resp.json()
                except ValueError:
                    outcome = "error"
                    raise LensRequestError(
                        "bad_response", f"Lens returned non-JSON for {op}", resp.status_code
                    ) from None
                outcome = "ok"
                return body
            settled = True
            self.breaker.record_failure()
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            raise LensUnavailable(
                f"Lens at {self.base_url} unavailable for {op}{tries}: {problem}",
                details={"operation": op, "attempts": attempts},
            )
        finally:
            if not settled:  # e.g. KeyboardInterrupt mid-request: never leave a half-open trial dangling
                self.breaker.record_failure()
            seconds = time.perf_counter() - started
            self._stats.add(op, outcome, seconds, retries)
            metrics.record_lens_call(op, outcome, seconds, retries, fallback=_FALLBACK.get())
            span.set_attributes({"mimir.lens.outcome": outcome, "mimir.lens.retries": retries})
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, outcome))
            otel_context.detach(span_token)
            span.end()
            if self.on_call is not None:
                self.on_call(op, outcome, seconds, retries)

    def _repo_url(self, name: str) -> str:
        try:
            return f"/api/v1/repos/{quote(validate_name(name), safe='')}"
        except LensError as exc:
            raise _request_error(exc) from exc

    # -- operations ---------------------------------------------------------------------
    def index(
        self,
        path: Path,
        name: str,
        *,
        rev: str | None,
        seed: str | None,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
    ) -> dict[str, Any]:
        """Submit a job, then poll it. ``path`` is a path on the Lens server's filesystem.

        Cancelling stops the polling only: Lens has no job-cancel API, so the job runs on.
        """
        body = {"path": str(path), "name": name, "rev": rev, "seed": seed}
        job: dict[str, Any] = self._request(
            "index_submit", "POST", "/api/v1/repos", json=body, retry=False, pinned=True
        )["job"]
        last: tuple[str, int, int] | None = None
        while True:
            stage = job.get("progress") or {}
            current = (str(stage.get("stage", "")), int(stage.get("done", 0)), int(stage.get("total", 0)))
            if progress is not None and current != last:
                progress(*current)
            last = current
            if job["state"] == "succeeded":
                report: dict[str, Any] = dict(job.get("report") or {})
                report["embedded"] = job.get("embedded", 0)
                report["job_id"] = job["id"]
                return report
            if job["state"] == "failed":
                err = job.get("error") or {}
                code = str(err.get("code", "internal"))
                raise LensRequestError(
                    code,
                    f"index job {job['id']} failed: {err.get('message', 'unknown error')}",
                    _CODE_STATUS.get(code, 500),
                    details={"job": job["id"], **(err.get("details") or {})},
                )
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped waiting for index job {job['id']} ({name!r}); it continues in Lens")
            time.sleep(self.poll_interval)
            job = self._request(
                "index_poll", "GET", f"/api/v1/jobs/{quote(job['id'], safe='')}", pinned=True
            )["job"]

    def search(
        self,
        query: str,
        *,
        mode: str,
        limit: int,
        context: int,
        repos: list[str] | None,
        timeout_ms: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"q": query, "mode": mode, "limit": limit, "context": context, "repos": repos}
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        if cursor is not None:
            body["cursor"] = cursor
        # The server may legitimately take timeout_ms; do not give up on it before that.
        timeout = None
        if timeout_ms is not None and timeout_ms / 1000 + 1 > self.read_timeout:
            timeout = httpx.Timeout(timeout_ms / 1000 + 1, connect=self.connect_timeout)
        result: dict[str, Any] = self._request("search", "POST", "/api/v1/search", json=body, timeout=timeout)
        return result

    def read_file(self, repo: str, path: str, start: int | None, end: int | None) -> dict[str, Any]:
        params = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        result: dict[str, Any] = self._request(
            "read_file", "GET", f"{self._repo_url(repo)}/files/{_quote_path(path)}", params=params
        )
        return result

    def read_spans(self, repo: str, spans: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
        # Read-only, so retried like search; same replica choice, breaker and errors as read_file.
        body = {"spans": [{"path": p, "start": s, "end": e} for p, s, e in spans]}
        result: dict[str, Any] = self._request(
            "read_spans", "POST", f"{self._repo_url(repo)}/spans", json=body
        )
        return result

    def symbols(self, repo: str, q: str, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": q, "limit": limit}
        if kind:
            params["kind"] = kind
        found: list[dict[str, Any]] = self._request(
            "symbols", "GET", f"{self._repo_url(repo)}/symbols", params=params
        )["symbols"]
        return found

    def repo(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self._request("repo", "GET", self._repo_url(name))["repo"]
        return info

    def import_shard(self, name: str, shard_path: Path) -> None:
        """Not possible over HTTP: Lens has no upload endpoint, and its data dir is not ours."""
        raise NotSupported(
            "importing a shard needs Lens in-process (unset LENS_URL) or direct access to its data dir",
            details={"repo": name, "lens_url": self.base_url},
        )

    def shard_path(self, name: str) -> Path | None:
        return None

    def status(self) -> dict[str, Any]:
        """Probe ``/health`` once (no retries); never raises."""
        started = time.perf_counter()
        error: str | None = None
        try:
            self._request("health", "GET", "/health", retry=False)
            reachable = True
        except LensError as exc:
            reachable, error = False, exc.message
        return {
            "mode": self.mode,
            "reachable": reachable,
            "url": self.base_url,
            "breaker": self.breaker.state,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": error,
        }


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return str(err["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:200] or resp.reason_phrase


def _http_error(resp: httpx.Response) -> LensRequestError:
    """Lens's JSON error body as an exception; tolerate proxies that answer with HTML."""
    try:
        err = resp.json()["error"]
        code, message, details = str(err["code"]), str(err["message"]), dict(err.get("details") or {})
    except (ValueError, KeyError, TypeError):
        code, message, details = f"http_{resp.status_code}", resp.text[:200] or resp.reason_phrase, {}
    return LensRequestError(code, message, resp.status_code, details=details)


def make_lens_backend(
    lens_url: str | None,
    *,
    data_dir: Path,
    token: str | None,
    timeout_s: float = 10.0,
    embed: bool = True,
) -> LensBackend:
    """HTTP when ``lens_url`` is set, else in-process on ``data_dir`` (Lens's own data directory)."""
    if lens_url:
        return HttpLens(lens_url, token=token, read_timeout=timeout_s)
    return InProcessLens.from_data_dir(data_dir, embed=embed)


__all__ = [
    "Cancelled",
    "CircuitOpen",
    "HttpLens",
    "InProcessLens",
    "LensBackend",
    "LensRequestError",
    "LensUnavailable",
    "NotSupported",
    "fallback_ready",
    "make_lens_backend",
]
