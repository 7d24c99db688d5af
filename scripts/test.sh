#!/usr/bin/env bash
# Install what the tests need, then lint, type-check and run the test suite.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v ctags >/dev/null || need_apt+=(universal-ctags)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
command -v prometheus-postgres-exporter >/dev/null || need_apt+=(prometheus-postgres-exporter)
command -v prometheus-redis-exporter >/dev/null || need_apt+=(prometheus-redis-exporter)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (install them with apt-get)" >&2
    exit 1
  fi
fi
bash scripts/services.sh  # PostgreSQL, Redis, NATS on loopback: the tests use the real servers
scripts/setup.sh test
. .venv/bin/activate
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
pytest -q "$@"
