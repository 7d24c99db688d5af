"""Per-process setup for a server (logs, traces, metrics mode) and uvicorn with one or N workers.

With N workers each process is a fresh interpreter that imports the app through a
factory, so every worker calls :func:`setup_process` itself. Metrics from N workers are
only right in prometheus_client multiprocess mode, so :func:`prepare_multiprocess_dir`
turns it on (a private temporary directory) when ``PROMETHEUS_MULTIPROC_DIR`` is not set.

Cleanup runs at the app's lifespan shutdown (:class:`ShutdownHooks`), not at exit.

SIGTERM is a graceful shutdown: uvicorn closes the listening socket, lets in-flight requests
finish for up to ``shutdown_grace_s`` seconds (then cancels them), runs the lifespan shutdown
and re-raises the signal; :func:`serve` turns that re-raised SIGTERM into exit status 0, as
``mimir worker`` does, so a deploy's SIGTERM is a clean exit rather than death by signal.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import tempfile
import threading
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.observability.logging import setup_logging
from infra.observability.metrics import MULTIPROC_ENV, mark_process_dead, multiprocess_dir
from infra.observability.tracing import flush, setup_tracing

if TYPE_CHECKING:
    from uvicorn import Config

log = logging.getLogger("infra.observability")
_PID_FILE = re.compile(r"_(\d+)\.db$")


class ObservabilitySettings(Protocol):
    """The settings fields both services share (LensSettings, MimirSettings)."""

    @property
    def environment(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def otel_endpoint(self) -> str | None: ...


def setup_process(service: str, version: str, settings: ObservabilitySettings) -> None:
    """Logging and tracing for this process, from the service's settings."""
    setup_logging(
        service, environment=settings.environment, log_format=settings.log_format, level=settings.log_level
    )
    setup_tracing(service, version=version, environment=settings.environment, endpoint=settings.otel_endpoint)


def process_exiting() -> None:
    """Flush spans; in multiprocess mode stop this process's live gauges (in-flight, breaker) counting."""
    flush()
    mark_process_dead(os.getpid())


class ShutdownHooks:
    """Wrap an app so :func:`process_exiting` runs when its lifespan has shut down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                process_exiting()
            await send(message)

        await self.app(scope, receive, send_wrapped)


def prepare_multiprocess_dir(*, workers: int) -> None:
    """Before serving: with several workers make sure multiprocess mode is on; drop stale files.

    Files of other (earlier) processes would add a dead run's counters to this one's,
    so the directory must belong to one service instance; this process's own files stay.
    """
    if multiprocess_dir() is None and workers > 1:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="prometheus-multiproc-")
    path = multiprocess_dir()
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    mine = str(os.getpid())
    for stale in path.glob("*.db"):
        match = _PID_FILE.search(stale.name)
        if match is None or match.group(1) != mine:
            stale.unlink(missing_ok=True)


def serve(
    app: ASGIApp | None,
    *,
    factory: str,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    shutdown_grace_s: int | None = None,
) -> None:
    """Run uvicorn: ``app`` in this process, or ``workers`` processes built by ``factory``.

    uvicorn's own logging config and access log are off: our root handler renders its
    lines, and the HTTP middleware logs each request with its route, status and ids.
    On SIGTERM in-flight requests get ``shutdown_grace_s`` seconds (None: unbounded).
    """
    import uvicorn

    level = log_level.lower()
    _exit_zero_on_sigterm()
    if workers > 1 or app is None:
        # This process only supervises: its gauges (all zero) must not count among the workers'.
        mark_process_dead(os.getpid())
        _nodelay_listener(uvicorn.Config)
        log.info("starting %d workers", workers, extra={"workers": workers})
        uvicorn.run(
            factory,
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_config=None,
            log_level=level,
            access_log=False,
            timeout_graceful_shutdown=shutdown_grace_s,
        )
    else:
        uvicorn.run(
            ShutdownHooks(app),
            host=host,
            port=port,
            log_config=None,
            log_level=level,
            access_log=False,
            timeout_graceful_shutdown=shutdown_grace_s,
        )


def _nodelay_listener(config_class: type[Config]) -> None:
    """Make the listening socket uvicorn binds for N workers turn Nagle's algorithm off.

    uvicorn binds that socket with ``socket.socket(family)`` (protocol 0), and asyncio only sets
    TCP_NODELAY on sockets whose protocol is IPPROTO_TCP, so every connection the workers accepted
    kept Nagle's algorithm: a response written in two parts (headers, then body) waited for the
    client's delayed ACK, about 40 ms on every request of a keep-alive connection (even /health).
    Linux copies the option from a listening socket to the connections it accepts.
    """
    bind = config_class.bind_socket
    if getattr(bind, "_nodelay", False):
        return

    def bind_socket(self: Config) -> socket.socket:
        sock = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    bind_socket._nodelay = True  # type: ignore[attr-defined]
    config_class.bind_socket = bind_socket  # type: ignore[method-assign]


def _exit_zero_on_sigterm() -> None:
    """SIGTERM outside uvicorn's own handling (before it starts, and the signal it re-raises after
    its graceful shutdown) ends the process with status 0 instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_zero(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_zero)


__all__ = [
    "ObservabilitySettings",
    "ShutdownHooks",
    "prepare_multiprocess_dir",
    "process_exiting",
    "serve",
    "setup_process",
]
