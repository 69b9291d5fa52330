#!/usr/bin/env bash
# Install what fedge needs on a fresh Debian machine, idempotently.
#   scripts/bootstrap.sh            virtualenv + Python packages (the demo needs no more)
#   scripts/bootstrap.sh --services also the real servers the integration tests start:
#                                   mosquitto, victoria-metrics, influxdb (Debian packages)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bootstrap: apt-get install ${missing[*]}"
    if [ $apt_updated -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${1:-}" = "--services" ]; then
    apt_install mosquitto victoria-metrics influxdb
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
fi
if [ -z "$PYTHON" ]; then apt_install python3 python3-venv; PYTHON=python3; fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "bootstrap: fedge needs Python >= 3.11, $PYTHON is $("$PYTHON" -V)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$PYTHON" -m venv .venv
    fi
fi

# Re-install only when the dependency spec changed (the stamp is a hash of it).
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.fedge-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "bootstrap: installing Python packages into .venv (torch pinned by constraints.txt)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
    echo "$stamp" > .venv/.fedge-stamp
fi
