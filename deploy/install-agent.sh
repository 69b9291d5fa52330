#!/usr/bin/env bash
# Install the fedge edge agent: a virtualenv with the base install (or extras), its
# config and, unless --no-systemd, the fedge user and the hardened systemd unit.
#
#   sudo deploy/install-agent.sh                          # Raspberry Pi: /opt/fedge + systemd
#   sudo deploy/install-agent.sh --extras agent           # + Modbus / OPC UA sources
#   deploy/install-agent.sh --prefix ~/fedge --no-systemd # anywhere, no root, no service
#
# Options:
#   --prefix DIR     install root (default /opt/fedge): DIR/.venv holds the agent.
#                    With --no-systemd the config and state go to DIR/etc and DIR/var
#                    (else /etc/fedge and /var/lib/fedge).
#   --config FILE    agent config to install if none exists yet (default deploy/agent.toml)
#   --extras LIST    pip extras, e.g. "agent" (pymodbus, asyncua); default: none (base)
#   --python PY      interpreter for the virtualenv (default python3, >= 3.11)
#   --source DIR     what to pip install (default: this repository)
#   --no-systemd     no user, no unit, no root needed
#
# pip uses the machine's own configuration (index, find-links, proxies); the repo's
# constraints.txt pins torch to the CPU build the project is tested with.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/fedge
config=""
extras=""
python=python3
systemd=1

die() { echo "install-agent: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
        --config) [ $# -ge 2 ] || die "--config needs a file"; config="$2"; shift 2 ;;
        --extras) [ $# -ge 2 ] || die "--extras needs a list"; extras="$2"; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python="$2"; shift 2 ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; src="$2"; shift 2 ;;
        --no-systemd) systemd=0; shift ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$extras" in
    ""|agent) ;;
    *) die "--extras: a device install takes none or 'agent', not '$extras'" ;;
esac
[ -f "$src/pyproject.toml" ] || die "no pyproject.toml in $src"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
if [ "$systemd" -eq 1 ]; then
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or pass --no-systemd"
    command -v systemctl >/dev/null || die "systemctl not found: pass --no-systemd"
    etc=/etc/fedge
    state=/var/lib/fedge
else
    etc="$prefix/etc"
    state="$prefix/var"
fi
config="${config:-$src/deploy/agent.toml}"
[ -f "$config" ] || die "config $config not found"

if ! "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    if [ "$systemd" -eq 1 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv >/dev/null
    fi
    "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is not Python >= 3.11 with venv"
fi

if [ "$systemd" -eq 1 ]; then
    id fedge >/dev/null 2>&1 || useradd --system --home "$state" --shell /usr/sbin/nologin fedge
    install -d -o fedge -g fedge -m 0750 "$state"
    install -d -m 0755 "$etc"
else
    install -d -m 0750 "$state"
    install -d -m 0755 "$etc"
fi

venv="$prefix/.venv"
"$python" -m venv "$venv"
spec="$src"
[ -z "$extras" ] || spec="$src[$extras]"
# Not editable: the service runs from the virtualenv alone, never from this checkout.
"$venv/bin/pip" install -q --no-warn-script-location -c "$src/constraints.txt" "$spec"
# Smoke test: the console script runs and the agent imports (no server package needed).
"$venv/bin/fedge" --help >/dev/null
"$venv/bin/python" -c 'import edge_agent.agent, fedge_app.wiring'

if [ ! -f "$etc/agent.toml" ]; then
    if [ "$systemd" -eq 1 ]; then
        install -m 0640 -g fedge "$config" "$etc/agent.toml"
    else
        # Point the example's store at this prefix's state directory.
        sed "s|/var/lib/fedge|$state|g; s|/etc/fedge|$etc|g" "$config" > "$etc/agent.toml"
        chmod 0640 "$etc/agent.toml"
    fi
fi
if [ ! -f "$etc/agent.env" ]; then
    if [ "$systemd" -eq 1 ]; then
        install -m 0640 -g fedge /dev/null "$etc/agent.env"
    else
        install -m 0640 /dev/null "$etc/agent.env"
    fi
fi

if [ "$systemd" -eq 0 ]; then
    echo "fedge agent installed in $venv (config $etc/agent.toml, state $state); run it with:"
    echo "  $venv/bin/fedge agent --config $etc/agent.toml"
    exit 0
fi

unit=/etc/systemd/system/fedge-agent.service
sed "s|/opt/fedge/|$prefix/|g" "$src/deploy/fedge-agent.service" > "$unit"
chmod 0644 "$unit"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" || die "systemd-analyze rejects $unit"
fi
systemctl daemon-reload
systemctl enable --now fedge-agent.service
echo "fedge agent installed; edit $etc/agent.toml and $etc/agent.env, then:"
echo "  systemctl restart fedge-agent && journalctl -u fedge-agent -f"
