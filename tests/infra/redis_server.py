"""Redis for tests: the shared loopback server, or a private one started from ops/redis/redis.conf.

The private server proves the production config file is valid and lets a test SIGKILL and
restart Redis on the same port without disturbing anyone else. Every test uses a fresh key
prefix, so runs never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
REDIS_CONF = REPO / "ops" / "redis" / "redis.conf"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def fresh_prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


def shared_redis_url() -> str:
    """REDIS_URL (default loopback :6379), failing the test with a clear message when it is down."""
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {url} ({exc}); start it with scripts/services.sh")
    finally:
        client.close()
    return url


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class PrivateRedis:
    """``redis-server ops/redis/redis.conf`` on its own port and directory."""

    def __init__(self, workdir: Path, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        log = (self.workdir / "redis.log").open("ab")
        cmd = [self.binary, str(REDIS_CONF), "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen([*cmd, "--dir", str(self.workdir)], stdout=log, stderr=log)
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"redis-server exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.kill()
                        pytest.fail(f"redis-server did not answer within {timeout_s}s:\n{self.log_tail()}")
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, exactly like a crashed or OOM-killed server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server must die too
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers, like a hung or swapping server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "redis.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
