#!/usr/bin/env bash
# The main job on the embedded default: set up, index a repository (this one unless REPO=path),
# then serve Lens on http://127.0.0.1:${PORT:-3000}. Data lives in ${LENS_DATA_DIR:-./.lens-data}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
. "$ROOT/.venv/bin/activate"
export LENS_DATA_DIR=${LENS_DATA_DIR:-$ROOT/.lens-data}
REPO=${REPO:-$ROOT}
if ! git -C "$REPO" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  echo "note: $REPO has no commits (or is not git): indexing its working directory" >&2
  lens index "$REPO" --worktree
else
  lens index "$REPO"
fi
exec lens serve --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
