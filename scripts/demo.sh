#!/usr/bin/env bash
# Quick start, command 1: install what is needed, then run the simulated fleet.
# Extra arguments go to `fedge demo` (e.g. --devices 16 --rounds 20 --summary-json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/fedge demo "$@"
