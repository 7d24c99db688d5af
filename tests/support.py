"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

# Two Python files with definitions, a docstring and a call: the sample several API tests index.
SAMPLE_SOURCES: dict[str, str | bytes] = {
    "src/app.py": (
        "import os\n"
        "\n"
        "def parse_config(path):\n"
        '    """Read the configuration file."""\n'
        "    with open(path) as fh:\n"
        "        return fh.read()\n"
        "\n"
        "class ConfigLoader:\n"
        "    def load(self):\n"
        "        return parse_config(os.environ['CFG'])\n"
    ),
    "src/util.py": "def helper_function(x):\n    return x + 1\n",
}


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_lens(data: Path, roots: Path, port: int, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """A ``lens serve`` process on loopback ``port`` (own process group, no embeddings), once healthy."""
    env = {**os.environ, "LENS_DATA_DIR": str(data), "LENS_ALLOWED_ROOTS": str(roots), "LENS_EMBED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("lens did not start")
