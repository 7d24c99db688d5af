"""Test helpers for real NATS: fresh namespaces on the shared server, private servers to kill.

Every test run gets its own namespace (streams ``<ns>_JOBS``/``<ns>_DLQ``) and deletes it after,
so runs never see each other's jobs. A test that must take NATS down starts a private
``nats-server -js`` on a free port with its own store directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from types import TracebackType

import nats
from nats.js.errors import NotFoundError

from support import free_port

SHARED_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def fresh_namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def namespace_streams(names: list[str], namespace: str) -> list[str]:
    """Streams of ``namespace``: the queue's ``NS_*`` and the shard store's ``KV_NS-*``/``OBJ_NS-*``."""
    prefixes = (f"{namespace}_", f"KV_{namespace}-", f"OBJ_{namespace}-")
    return [n for n in names if n.startswith(prefixes)]


def delete_namespace(url: str, namespace: str) -> None:
    """Remove every stream of ``namespace``: jobs, consumer, dead letters, and the index runs'
    shipped shards (queue-mode runs publish them to the same namespace)."""

    async def drop() -> None:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            names = [str(s.config.name) for s in await js.streams_info()]
            for name in namespace_streams(names, namespace):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(drop())


def stream_names(url: str) -> list[str]:
    async def names() -> list[str]:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            return [str(s.config.name) for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    return asyncio.run(names())


class NatsServer:
    """A private ``nats-server -js`` on a free loopback port; ``kill()`` takes it down hard."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._dir = tempfile.mkdtemp(prefix="h4-nats-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NatsServer:
        self._proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-sd", self._dir, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening within 10 s")

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
