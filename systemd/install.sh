#!/usr/bin/env bash
# Install, upgrade or remove appliance as a systemd service on a Debian gateway.
#
#   sudo systemd/install.sh [--with-training]   install, or upgrade in place
#   sudo systemd/install.sh --uninstall [--purge]
#
#   /opt/appliance/venv -> venv-<stamp>   the package installed from this source tree
#                                         (a copy, not editable: the checkout may go)
#   /etc/appliance/appliance.toml         root:appliance 0640, kept on upgrade
#   /etc/appliance/credentials/mqtt_password
#                                         root 0600, handed to the service by systemd
#                                         (LoadCredential=); empty = no password
#   /var/lib/appliance/                   the database, status file and model registry
#
# --with-training adds the training extra (scikit-learn, skl2onnx): without it the
# service predicts, watches drift and takes promoted models, but cannot retrain by
# itself, so a fresh config gets [retrain] enabled = false.
# --uninstall stops and removes the service and the code; the config, the data and
# the user stay unless --purge.
set -euo pipefail

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }

training=0 uninstall=0 purge=0
for arg in "$@"; do
    case "$arg" in
        --with-training) training=1 ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
    echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

prefix=/opt/appliance
etc=/etc/appliance
data=/var/lib/appliance
unit=/etc/systemd/system/appliance.service

if [ "$uninstall" = 1 ]; then
    systemctl disable --now appliance.service 2>/dev/null || true
    rm -f "$unit"
    systemctl daemon-reload
    rm -rf "$prefix"
    if [ "$purge" = 1 ]; then
        rm -rf "$etc" "$data"
        userdel appliance 2>/dev/null || true
        echo "removed appliance, its config, its data and its user"
    else
        echo "removed appliance; kept $etc, $data and the user appliance (--purge removes them)"
    fi
    exit 0
fi

src="$(cd "$(dirname "$0")/.." && pwd)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev \
    build-essential mosquitto >/dev/null
id appliance >/dev/null 2>&1 || useradd --system --home-dir "$data" --no-create-home \
    --shell /usr/sbin/nologin appliance

# A fresh venv per install; the symlink moves only once it is built and checked, so a
# failed upgrade leaves the running version alone.  From a clean copy of the tree:
# the checkout's build/ and in-place .so files (make install) must not leak in.
stamp="$(date +%Y%m%d%H%M%S)"
venv="$prefix/venv-$stamp"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar -C "$src" --exclude=.git --exclude=.venv --exclude=build --exclude=data \
    --exclude='*.egg-info' --exclude='*.so' --exclude='*.c' -cf - . | tar -C "$build" -xf -
install -d -m 0755 "$prefix"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
if [ "$training" = 1 ]; then
    "$venv/bin/pip" install --quiet "${build}[train]"
else
    "$venv/bin/pip" install --quiet "$build"
fi
install -m 0644 "$src/README.md" "$prefix/README.md"

install -d -m 0750 -o root -g appliance "$etc"
if [ ! -e "$etc/appliance.toml" ]; then
    install -m 0640 -o root -g appliance "$src/systemd/appliance.toml" "$etc/appliance.toml"
    if [ "$training" = 0 ]; then
        printf '\n[retrain]\n# installed without --with-training: no scikit-learn to retrain with\nenabled = false\n' \
            >>"$etc/appliance.toml"
    fi
fi
# an older install left it world-readable: a password in it is refused at load
chown root:appliance "$etc/appliance.toml"
chmod 0640 "$etc/appliance.toml"
install -d -m 0700 -o root -g root "$etc/credentials"
[ -e "$etc/credentials/mqtt_password" ] || \
    install -m 0600 -o root -g root /dev/null "$etc/credentials/mqtt_password"
install -d -m 0750 -o appliance -g appliance "$data"

# the config must load with the new code before the service is switched to it
runuser -u appliance -- "$venv/bin/appliance" run --config "$etc/appliance.toml" --check-config

ln -sfn "$venv" "$prefix/venv.new"
mv -T "$prefix/venv.new" "$prefix/venv"
install -m 0644 "$src/systemd/appliance.service" "$unit"
systemctl daemon-reload
systemctl enable appliance.service
systemctl restart appliance.service
for old in "$prefix"/venv-*; do
    [ "$old" = "$venv" ] || rm -rf "$old"
done
# installs before this layout copied the whole source tree, with its .venv, here
find "$prefix" -mindepth 1 -maxdepth 1 ! -name 'venv*' ! -name README.md -exec rm -rf {} +
echo "installed $venv; check with: systemctl status appliance; journalctl -u appliance"
