#!/usr/bin/env bash
# Install the fedge agent on a Raspberry Pi (Debian / Raspberry Pi OS), as root:
#   sudo deploy/install-agent.sh [path/to/agent.toml]
# Creates the fedge user, a virtualenv in /opt/fedge, /etc/fedge and the systemd unit.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
config="${1:-$src/deploy/agent.toml}"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
id fedge >/dev/null 2>&1 || useradd --system --home /var/lib/fedge --shell /usr/sbin/nologin fedge
install -d -o fedge -g fedge -m 0750 /var/lib/fedge
install -d -m 0755 /etc/fedge /opt/fedge

rsync -a --delete --exclude .venv --exclude .git "$src/" /opt/fedge/ 2>/dev/null || cp -a "$src/." /opt/fedge/
python3 -m venv /opt/fedge/.venv
/opt/fedge/.venv/bin/pip install -q --upgrade pip
/opt/fedge/.venv/bin/pip install -q -c /opt/fedge/constraints.txt /opt/fedge

[ -f /etc/fedge/agent.toml ] || install -m 0640 -g fedge "$config" /etc/fedge/agent.toml
[ -f /etc/fedge/agent.env ] || install -m 0640 -g fedge /dev/null /etc/fedge/agent.env
install -m 0644 "$src/deploy/fedge-agent.service" /etc/systemd/system/fedge-agent.service
systemctl daemon-reload
systemctl enable --now fedge-agent.service
echo "fedge agent installed; edit /etc/fedge/agent.toml and /etc/fedge/agent.env, then:"
echo "  systemctl restart fedge-agent && journalctl -u fedge-agent -f"
