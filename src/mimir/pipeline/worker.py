"""Entry point of an index worker process: ``python -m mimir.pipeline.worker INDEX_ID RUN_ID``.

Settings arrive as JSON in ``MIMIR_WORKER_SETTINGS`` (so the worker sees exactly
what the server resolved); the process leads its own session, so ``cancel`` can
kill it together with everything it started.
"""

from __future__ import annotations

import os
import sys

from mimir.config import MimirSettings
from mimir.pipeline.run import run_pipeline


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mimir.pipeline.worker INDEX_ID RUN_ID", file=sys.stderr)
        return 2
    settings = MimirSettings.model_validate_json(os.environ["MIMIR_WORKER_SETTINGS"])
    try:
        run_pipeline(settings, argv[0], argv[1])
    except BaseException as exc:  # the run already recorded why; the exit code says it failed
        print(f"index run {argv[1]} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
