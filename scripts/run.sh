#!/usr/bin/env bash
# The main job on the embedded default (SQLite, in-process queue, no external service):
# set up, start Lens (:3000) and Mimir (:8000, MCP at /mcp, using Lens over HTTP), index a
# repository (this one unless REPO=path) through Mimir, then print the MCP endpoint and a
# ready-to-paste client config. Ctrl-C stops both services. Data: ${DATA_DIR:-./.mimir-lens-data}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
. "$ROOT/.venv/bin/activate"
REPO=$(cd "${REPO:-$ROOT}" && pwd)
DATA_DIR=${DATA_DIR:-$ROOT/.mimir-lens-data}
LENS_PORT=${LENS_PORT:-3000}
MIMIR_PORT=${MIMIR_PORT:-8000}
mkdir -p "$DATA_DIR"
export LENS_DATA_DIR="$DATA_DIR/lens" LENS_ALLOWED_ROOTS="$REPO"
export MIMIR_DATA_DIR="$DATA_DIR/mimir" MIMIR_ALLOWED_ROOTS="$REPO" LENS_URL="http://127.0.0.1:$LENS_PORT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_http() {
  for _ in $(seq 1 150); do
    if python -c "import httpx,sys; sys.exit(httpx.get('$1', timeout=1).status_code != 200)" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "error: $1 did not come up" >&2
  return 1
}

lens serve --port "$LENS_PORT" & pids+=($!)
wait_http "http://127.0.0.1:$LENS_PORT/health"
mimir serve --port "$MIMIR_PORT" & pids+=($!)
wait_http "http://127.0.0.1:$MIMIR_PORT/health"

if ! git -C "$REPO" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  echo "error: $REPO has no commits; Mimir indexes a git revision (commit first, or set REPO)" >&2
  exit 1
fi
mimir index "$REPO"

cat <<MSG

Lens  : http://127.0.0.1:$LENS_PORT   (search: curl 'http://127.0.0.1:$LENS_PORT/api/v1/search?q=sym:Mimir')
Mimir : http://127.0.0.1:$MIMIR_PORT   (REST: /api/search, /api/ask; OpenAPI: /docs)
MCP endpoint (Streamable HTTP): http://127.0.0.1:$MIMIR_PORT/mcp

Claude Code:
  claude mcp add --transport http mimir http://127.0.0.1:$MIMIR_PORT/mcp

Claude Desktop / any stdio MCP client (claude_desktop_config.json):
{
  "mcpServers": {
    "mimir": {
      "command": "$ROOT/.venv/bin/mimir",
      "args": ["mcp"],
      "env": {"MIMIR_ALLOWED_ROOTS": "$REPO", "MIMIR_DATA_DIR": "$MIMIR_DATA_DIR"}
    }
  }
}

Press Ctrl-C to stop.
MSG
wait
