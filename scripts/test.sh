#!/usr/bin/env bash
# Quick start, command 2: install what is needed (incl. Mosquitto, VictoriaMetrics and
# InfluxDB from Debian), then lint, type-check and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --services
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy (strict: every package)"
.venv/bin/mypy
echo "== import contracts (floors, no circles)"
.venv/bin/lint-imports --no-cache
echo "== pytest"
exec .venv/bin/pytest "$@"
