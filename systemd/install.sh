#!/usr/bin/env bash
# Install appliance as a systemd service on a Debian gateway (run as root from the repo).
#   /opt/appliance         the code and its .venv
#   /etc/appliance/        appliance.toml (kept if present)
#   /var/lib/appliance/    the DuckDB file and models
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root"; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
apt-get install -y -qq python3-venv build-essential mosquitto >/dev/null
id appliance >/dev/null 2>&1 || useradd --system --home /var/lib/appliance --shell /usr/sbin/nologin appliance
mkdir -p /opt/appliance /etc/appliance /var/lib/appliance/models
cp -a "$src/." /opt/appliance/
make -C /opt/appliance install
cp -n "$src/systemd/appliance.toml" /etc/appliance/appliance.toml
chown -R appliance:appliance /var/lib/appliance
cp "$src/systemd/appliance.service" /etc/systemd/system/appliance.service
systemctl daemon-reload
systemctl enable --now appliance
echo "installed; check with: systemctl status appliance && /opt/appliance/.venv/bin/appliance status --config /etc/appliance/appliance.toml"
