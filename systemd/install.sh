#!/bin/sh
# Install kmrl-sync as a systemd service (run as root from a checkout or an unpacked sdist):
#   sudo ./systemd/install.sh [PYTHON]     PYTHON defaults to python3 (3.11 or newer)
# Idempotent: re-running upgrades the package in /opt/kmrl-sync and keeps config and state.
# Creates: user/group kmrl-sync (system, no login), /opt/kmrl-sync (virtualenv),
#          /etc/kmrl-sync/{sync.yaml,connectors/,credentials/,kmrl-sync.env}, /var/lib/kmrl-sync,
#          /etc/systemd/system/kmrl-sync.service, /usr/local/sbin/kmrl-sync (the admin command).
#          It does not enable or start the service.
set -eu

PYTHON=${1:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/kmrl-sync
ETC=/etc/kmrl-sync
STATE=/var/lib/kmrl-sync
UNIT=/etc/systemd/system/kmrl-sync.service

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo)" >&2
    exit 2
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "install.sh: $PYTHON is older than 3.11" >&2
    exit 2
}

# 1. A system user that owns only the state directory.
if ! getent group kmrl-sync >/dev/null; then
    groupadd --system kmrl-sync
fi
if ! getent passwd kmrl-sync >/dev/null; then
    useradd --system --gid kmrl-sync --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "kmrl-sync daemon" kmrl-sync
fi

# 2. The package in its own virtualenv (root-owned: the service cannot modify its own code).
if [ ! -x "$PREFIX/bin/python" ]; then
    "$PYTHON" -m venv "$PREFIX"
fi
"$PREFIX/bin/pip" install --quiet --upgrade pip
"$PREFIX/bin/pip" install --quiet --upgrade "$SRC"
cp "$SRC/README.md" "$PREFIX/README.md" 2>/dev/null || true

# 3. Configuration (root-owned, readable by the service group) and credentials (root only;
#    systemd hands them to the service through LoadCredential=). This script alone owns /etc/kmrl-sync:
#    the unit has no ConfigurationDirectory= (systemd would want its own owner and mode for it).
install -d -o root -g kmrl-sync -m 0750 "$ETC" "$ETC/connectors"
install -d -o root -g root -m 0700 "$ETC/credentials"
if [ ! -e "$ETC/sync.yaml" ]; then
    cat > "$ETC/sync.yaml" <<'YAML'
# /etc/kmrl-sync/sync.yaml; see the README for every key. Reload after edits:
#   systemctl reload kmrl-sync
redis:
  url: embedded                 # or redis://kmrl-sync@redis-host:6379/0, rediss://... for TLS
  # password_file: ${CREDENTIALS_DIRECTORY}/kmrl_redis-password
  key_prefix: kmrl
state_dir: /var/lib/kmrl-sync
connectors_dir: connectors      # /etc/kmrl-sync/connectors/*.yaml, one file per connector
log: {level: info, format: json}
metrics: {listen: null}         # e.g. "127.0.0.1:9464"
daemon:
  lease_ttl: 60s
  heartbeat_ttl: 60s
  alert_after: 1h
  startup_jitter: 10s
  max_parallel: 4
  expected: true
YAML
    chown root:kmrl-sync "$ETC/sync.yaml"
    chmod 0640 "$ETC/sync.yaml"
fi
if [ ! -e "$ETC/kmrl-sync.env" ]; then
    install -o root -g kmrl-sync -m 0640 "$SRC/systemd/kmrl-sync.env.example" "$ETC/kmrl-sync.env"
fi

# 4. State (systemd's StateDirectory= would create it too; creating it here lets `kmrl-sync
#    check` run as the service user before the first start).
install -d -o kmrl-sync -g kmrl-sync -m 0750 "$STATE"

# 5. The unit.
install -o root -g root -m 0644 "$SRC/systemd/kmrl-sync.service" "$UNIT"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$UNIT" || echo "install.sh: systemd-analyze verify reported problems (above)" >&2
fi

# 6. The admin command: `sudo kmrl-sync ...` runs as the service does (its user, credentials and
#    environment file), so commands work once sync.yaml reads ${CREDENTIALS_DIRECTORY}.
install -o root -g root -m 0755 "$SRC/systemd/kmrl-sync-admin" /usr/local/sbin/kmrl-sync

cat <<MSG
kmrl-sync installed in $PREFIX.
Next:
  1. put one YAML file per connector in $ETC/connectors/ and secrets in $ETC/credentials/
  2. check it as the service will see it (its user, credentials and environment):
     sudo kmrl-sync check --connect        (/usr/local/sbin/kmrl-sync; any command works this way)
  3. sudo systemctl enable --now kmrl-sync && systemctl status kmrl-sync
MSG
