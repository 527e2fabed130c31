#!/usr/bin/env bash
# Install or upgrade the ImprovMX Webhook Archive as a hardened systemd service.
#
# Run as root from a checkout of the repository. Safe to run again: with nothing changed it
# changes nothing; after `git pull` it installs the new code and reloads the service
# gracefully (restarts it when the unit, .env or dependencies changed).
set -euo pipefail

usage() {
	cat <<EOF
Usage: sudo $0 [options]

  --install-dir DIR  where the app and its virtualenv live  [\$IMPROVMX_INSTALL_DIR, /opt/improvmx-webhook]
  --user NAME        unprivileged service user, created if missing  [\$IMPROVMX_USER, improvmx]
  --port PORT        loopback port gunicorn listens on (Caddy's upstream)  [\$IMPROVMX_PORT, 42010]
  --env-file FILE    .env to install; default: keep the installed one, else the checkout's .env  [\$IMPROVMX_ENV_FILE]
  --python PATH      interpreter for the virtualenv, 3.11 or newer  [\$IMPROVMX_PYTHON, /usr/bin/python3]
  --unit-dir DIR     where the unit file goes (packaging and tests)  [\$IMPROVMX_UNIT_DIR, /etc/systemd/system]
  --bin-dir DIR      where the operator command improvmx-archive goes  [\$IMPROVMX_BIN_DIR, /usr/local/bin]
  --dry-run          print what would be done, change nothing  [\$IMPROVMX_DRY_RUN=1]
  -h, --help         this text
EOF
}

INSTALL_DIR=${IMPROVMX_INSTALL_DIR:-/opt/improvmx-webhook}
SERVICE_USER=${IMPROVMX_USER:-improvmx}
PORT=${IMPROVMX_PORT:-42010}
ENV_FILE=${IMPROVMX_ENV_FILE:-}
PYTHON=${IMPROVMX_PYTHON:-/usr/bin/python3}
UNIT_DIR=${IMPROVMX_UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${IMPROVMX_BIN_DIR:-/usr/local/bin}
DRY_RUN=${IMPROVMX_DRY_RUN:-0}

UNIT=improvmx-webhook.service
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP_FILES=(app.py gunicorn.conf.py requirements.txt)

# shellcheck source=scripts/service_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/service_lib.sh"

while [[ $# -gt 0 ]]; do
	case $1 in
	--install-dir) need_value "$@"; INSTALL_DIR=$2; shift 2 ;;
	--user) need_value "$@"; SERVICE_USER=$2; shift 2 ;;
	--port) need_value "$@"; PORT=$2; shift 2 ;;
	--env-file) need_value "$@"; ENV_FILE=$2; shift 2 ;;
	--python) need_value "$@"; PYTHON=$2; shift 2 ;;
	--unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
	--bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option: $1" ;;
	esac
done

# Values end up in the unit file and in sed expressions: allow only plain paths and names.
[[ $INSTALL_DIR =~ ^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$ && $INSTALL_DIR != *..* ]] ||
	die "--install-dir must be an absolute path of letters, digits, '.', '_', '-' and '/': $INSTALL_DIR"
[[ $UNIT_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--unit-dir must be an absolute path: $UNIT_DIR"
[[ $BIN_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--bin-dir must be an absolute path: $BIN_DIR"
[[ $SERVICE_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ && $SERVICE_USER != root ]] ||
	die "--user must be a lower-case account name other than root: $SERVICE_USER"
if ! [[ $PORT =~ ^[0-9]{4,5}$ ]] || ((PORT < 1024 || PORT > 65535)); then
	die "--port must be a number from 1024 to 65535 (the service has no privilege to bind lower): $PORT"
fi

VENV=$INSTALL_DIR/.venv
INSTALLED_ENV=$INSTALL_DIR/.env
CODE_CHANGED=0 DEPS_CHANGED=0 ENV_CHANGED=0 UNIT_CHANGED=0

[[ $DRY_RUN == 1 ]] && say "dry run: nothing will be changed"
[[ $DRY_RUN == 1 || $EUID -eq 0 ]] || die "run as root, e.g. sudo $0"
umask 022
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for file in "${APP_FILES[@]}" improvmx_archive/__init__.py "$UNIT"; do
	[[ -f $SRC_DIR/$file ]] || die "$SRC_DIR/$file is missing: run this script from a complete checkout"
done
[[ $DRY_RUN == 1 ]] || command -v systemctl >/dev/null || die "systemctl not found: this installer needs systemd"

# --- configuration (checked first: the commonest mistake should cost no time) ------------
if [[ -n $ENV_FILE ]]; then
	[[ -f $ENV_FILE ]] || die "--env-file $ENV_FILE does not exist"
	ENV_SOURCE=$ENV_FILE
elif [[ -f $INSTALLED_ENV ]]; then
	ENV_SOURCE=$INSTALLED_ENV
elif [[ -f $SRC_DIR/.env ]]; then
	ENV_SOURCE=$SRC_DIR/.env
else
	die "no configuration: create $SRC_DIR/.env (API_KEY, MONGO_URI, ...; see docs/operations.md) or pass --env-file FILE"
fi
say "configuration: $ENV_SOURCE"
grep -Eq "^[[:space:]]*(export[[:space:]]+)?API_KEY[[:space:]]*=[[:space:]]*[\"']?[^[:space:]\"'#]" "$ENV_SOURCE" ||
	die "$ENV_SOURCE sets no API_KEY: add API_KEY=<long random token> (e.g. from: openssl rand -hex 32)"

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
	die "$PYTHON is missing or older than Python 3.11 (choose another with --python)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
	die "$PYTHON cannot create virtualenvs: apt-get install python3-venv"

# --- service user ----------------------------------------------------------------------
say "service user: $SERVICE_USER"
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
	[[ $(id -u "$SERVICE_USER") -ne 0 ]] || die "user $SERVICE_USER has uid 0; choose an unprivileged user"
	SERVICE_GROUP=$(id -gn "$SERVICE_USER")
	note "exists (group $SERVICE_GROUP)"
else
	run useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --comment "ImprovMX webhook archive" "$SERVICE_USER"
	SERVICE_GROUP=$SERVICE_USER
	did "created (system account, no login shell, no home)"
fi

# --- application code (root-owned: the service can read it, not change it) --------------
# Install src as dst unless it is already identical; remember that the code changed.
copy_file() {
	if [[ -f $2 ]] && cmp -s "$1" "$2"; then
		return
	fi
	run install -D -m 0644 -o root -g root "$1" "$2"
	CODE_CHANGED=1
}

say "application code: $INSTALL_DIR"
[[ -d $INSTALL_DIR ]] || run install -d -m 0755 -o root -g root "$INSTALL_DIR"
for file in "${APP_FILES[@]}"; do
	copy_file "$SRC_DIR/$file" "$INSTALL_DIR/$file"
done
while IFS= read -r -d '' file; do
	copy_file "$file" "$INSTALL_DIR/${file#"$SRC_DIR"/}"
done < <(find "$SRC_DIR/improvmx_archive" -type f ! -path '*/__pycache__/*' -print0)
if [[ -d $INSTALL_DIR/improvmx_archive ]]; then # drop modules the new version no longer has
	while IFS= read -r -d '' file; do
		if [[ ! -e $SRC_DIR/${file#"$INSTALL_DIR"/} ]]; then
			run rm -f "$file"
			CODE_CHANGED=1
		fi
	done < <(find "$INSTALL_DIR/improvmx_archive" -type f ! -path '*/__pycache__/*' -print0)
fi
if [[ $CODE_CHANGED == 1 ]]; then did "updated"; else note "unchanged"; fi

# --- virtualenv and dependencies -------------------------------------------------------
say "virtualenv: $VENV"
if [[ ! -x $VENV/bin/python ]]; then
	run "$PYTHON" -m venv "$VENV"
	DEPS_CHANGED=1
fi
"$VENV/bin/python" -c '' 2>/dev/null || [[ $DRY_RUN == 1 ]] ||
	die "$VENV is broken (was Python upgraded?): remove it and run this script again"
if [[ $DRY_RUN == 1 ]]; then
	run "$VENV/bin/pip" install -r "$INSTALL_DIR/requirements.txt"
	run "$VENV/bin/python" -m compileall -q "$INSTALL_DIR/app.py" "$INSTALL_DIR/improvmx_archive"
else
	"$VENV/bin/pip" freeze --all >"$WORK/before"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input --require-virtualenv \
		-r "$INSTALL_DIR/requirements.txt" || die "installing the requirements failed (see pip's output above)"
	"$VENV/bin/pip" freeze --all >"$WORK/after"
	cmp -s "$WORK/before" "$WORK/after" || DEPS_CHANGED=1
	# The service cannot write its install directory, so compile the bytecode now.
	"$VENV/bin/python" -m compileall -q "$INSTALL_DIR/app.py" "$INSTALL_DIR/improvmx_archive" >/dev/null
fi
if [[ $DRY_RUN == 0 && $DEPS_CHANGED == 1 ]]; then
	note "requirements installed"
elif [[ $DRY_RUN == 0 ]]; then
	note "requirements already satisfied"
fi

# --- check the configuration with the app itself, as the service user -------------------
# The candidate .env is checked in a scratch directory, so a bad one never replaces a
# working installed one.
say "checking configuration and MongoDB (flask check, as $SERVICE_USER)"
if [[ $DRY_RUN == 1 ]]; then
	run flask --app "$INSTALL_DIR/app.py" check
else
	install -m 0640 -o root -g "$SERVICE_GROUP" "$ENV_SOURCE" "$WORK/.env"
	chgrp "$SERVICE_GROUP" "$WORK"
	chmod 0750 "$WORK"
	if ! check_output=$(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_GROUP" --clear-groups \
		env -i -C "$WORK" PATH=/usr/bin:/bin LANG=C.UTF-8 STATE_DIRECTORY=/var/lib/improvmx-webhook \
		"$VENV/bin/flask" --app "$INSTALL_DIR/app.py" check 2>&1); then
		printf '%s\n' "$check_output" | sed 's/^/    /' >&2
		die "the configuration in $ENV_SOURCE does not work (above); fix it and run again (the service was not touched)"
	fi
	note "$(printf '%s\n' "$check_output" | grep -m 1 '^ok:' || echo ok)"
fi

# --- .env (root:service group 0640: the service reads it, cannot change it) ---------------
say ".env: $INSTALLED_ENV"
if [[ $ENV_SOURCE != "$INSTALLED_ENV" ]] && ! { [[ -f $INSTALLED_ENV ]] && cmp -s "$ENV_SOURCE" "$INSTALLED_ENV"; }; then
	run install -m 0640 -o root -g "$SERVICE_GROUP" "$ENV_SOURCE" "$INSTALLED_ENV"
	ENV_CHANGED=1
	did "installed from $ENV_SOURCE"
elif [[ $(stat -c '%U:%G %a' "$INSTALLED_ENV") != "root:$SERVICE_GROUP 640" ]]; then
	run chown "root:$SERVICE_GROUP" "$INSTALLED_ENV"
	run chmod 0640 "$INSTALLED_ENV"
	ENV_CHANGED=1
	did "ownership set to root:$SERVICE_GROUP, mode 0640"
else
	note "unchanged"
fi

# --- the operator command: the app's flask commands with the service's settings, as its user --
OPERATOR=$BIN_DIR/improvmx-archive
say "operator command: $OPERATOR"
cat >"$WORK/improvmx-archive" <<EOF
#!/bin/sh
# improvmx-archive: the operator commands of the ImprovMX Webhook Archive installed in
# $INSTALL_DIR (check, import, export, spool, purge, ...; --help lists them).
# Written by install_service.sh: runs the installed app's flask commands as the service user
# $SERVICE_USER with the service's own .env and state directory, from the current directory.
set -e
if [ "\$(id -un)" != "$SERVICE_USER" ]; then
	if [ "\$(id -u)" -ne 0 ]; then
		exec sudo -- "\$0" "\$@"
	fi
	exec setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_GROUP" --clear-groups -- "\$0" "\$@"
fi
exec env -i PATH=/usr/bin:/bin LANG=C.UTF-8 TERM="\${TERM:-dumb}" \\
	STATE_DIRECTORY=/var/lib/improvmx-webhook IMPROVMX_ENV_FILE="$INSTALLED_ENV" \\
	"$VENV/bin/flask" --app "$INSTALL_DIR/app.py" "\$@"
EOF
if [[ -f $OPERATOR ]] && cmp -s "$WORK/improvmx-archive" "$OPERATOR"; then
	note "unchanged"
else
	run install -D -m 0755 -o root -g root "$WORK/improvmx-archive" "$OPERATOR"
	did "installed: e.g. improvmx-archive check, improvmx-archive spool status"
fi

# --- systemd unit ---------------------------------------------------------------------
say "systemd unit: $UNIT_DIR/$UNIT"
sed -e "s|/opt/improvmx-webhook|$INSTALL_DIR|g" \
	-e "s|^User=.*|User=$SERVICE_USER|" \
	-e "s|^Group=.*|Group=$SERVICE_GROUP|" \
	-e "s|^Environment=GUNICORN_BIND=.*|Environment=GUNICORN_BIND=127.0.0.1:$PORT|" \
	"$SRC_DIR/$UNIT" >"$WORK/$UNIT"
if [[ -f $UNIT_DIR/$UNIT ]] && cmp -s "$WORK/$UNIT" "$UNIT_DIR/$UNIT"; then
	note "unchanged"
else
	run install -D -m 0644 -o root -g root "$WORK/$UNIT" "$UNIT_DIR/$UNIT"
	run systemctl daemon-reload
	UNIT_CHANGED=1
	did "installed"
fi

# --- enable, start or apply the changes -------------------------------------------------
say "service"
if systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then
	note "enabled at boot"
else
	run systemctl enable --quiet "$UNIT"
	did "enabled at boot"
fi
if ! systemctl is-active --quiet "$UNIT" 2>/dev/null; then
	run systemctl start "$UNIT" || die "$UNIT failed to start; see: journalctl -u $UNIT -n 50"
	did "started"
elif [[ $UNIT_CHANGED == 1 || $ENV_CHANGED == 1 || $DEPS_CHANGED == 1 ]]; then
	run systemctl restart "$UNIT" || die "$UNIT failed to restart; see: journalctl -u $UNIT -n 50"
	did "restarted (unit, .env or dependencies changed)"
elif [[ $CODE_CHANGED == 1 ]]; then
	note "new code: graceful reload (gunicorn replaces its workers)"
	run systemctl reload "$UNIT" || die "$UNIT failed to reload; see: journalctl -u $UNIT -n 50"
else
	note "running, nothing to apply"
fi

# --- the IMAP view (improvmx-imap.service): installed while the .env sets IMAP_ENABLED=true --
IMAP_UNIT=improvmx-imap.service
say "IMAP view: $UNIT_DIR/$IMAP_UNIT"
if grep -Eiq "^[[:space:]]*(export[[:space:]]+)?IMAP_ENABLED[[:space:]]*=[[:space:]]*[\"']?(true|1|yes|on)[\"']?[[:space:]]*(#.*)?$" "$ENV_SOURCE"; then
	[[ -f $SRC_DIR/$IMAP_UNIT ]] || die "$SRC_DIR/$IMAP_UNIT is missing: run this script from a complete checkout"
	if [[ $DRY_RUN == 1 ]]; then
		run flask --app "$INSTALL_DIR/app.py" imap check
	elif ! check_output=$(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_GROUP" --clear-groups \
		env -i -C "$WORK" PATH=/usr/bin:/bin LANG=C.UTF-8 STATE_DIRECTORY=/var/lib/improvmx-webhook \
		"$VENV/bin/flask" --app "$INSTALL_DIR/app.py" imap check 2>&1); then
		printf '%s\n' "$check_output" | sed 's/^/    /' >&2
		die "the IMAP settings in $ENV_SOURCE do not work (above); fix them or set IMAP_ENABLED=false"
	else
		note "$(printf '%s\n' "$check_output" | grep -m 1 '^certificate:' || echo ok)"
	fi
	IMAP_UNIT_CHANGED=0
	sed -e "s|/opt/improvmx-webhook|$INSTALL_DIR|g" \
		-e "s|^User=.*|User=$SERVICE_USER|" \
		-e "s|^Group=.*|Group=$SERVICE_GROUP|" \
		"$SRC_DIR/$IMAP_UNIT" >"$WORK/$IMAP_UNIT"
	if [[ -f $UNIT_DIR/$IMAP_UNIT ]] && cmp -s "$WORK/$IMAP_UNIT" "$UNIT_DIR/$IMAP_UNIT"; then
		note "unit unchanged"
	else
		run install -D -m 0644 -o root -g root "$WORK/$IMAP_UNIT" "$UNIT_DIR/$IMAP_UNIT"
		run systemctl daemon-reload
		IMAP_UNIT_CHANGED=1
		did "unit installed"
	fi
	if ! systemctl is-enabled --quiet "$IMAP_UNIT" 2>/dev/null; then
		run systemctl enable --quiet "$IMAP_UNIT"
		did "enabled at boot"
	fi
	if ! systemctl is-active --quiet "$IMAP_UNIT" 2>/dev/null; then
		run systemctl start "$IMAP_UNIT" || die "$IMAP_UNIT failed to start; see: journalctl -u $IMAP_UNIT -n 50"
		did "started"
	elif [[ $IMAP_UNIT_CHANGED == 1 || $ENV_CHANGED == 1 || $DEPS_CHANGED == 1 || $CODE_CHANGED == 1 ]]; then
		# One process holds the connections: a restart drops them and mail programs reconnect.
		run systemctl restart "$IMAP_UNIT" || die "$IMAP_UNIT failed to restart; see: journalctl -u $IMAP_UNIT -n 50"
		did "restarted (code, unit, .env or dependencies changed)"
	else
		note "running, nothing to apply"
	fi
elif [[ -f $UNIT_DIR/$IMAP_UNIT ]]; then
	if systemctl is-active --quiet "$IMAP_UNIT" 2>/dev/null; then
		run systemctl stop "$IMAP_UNIT"
	fi
	if systemctl is-enabled --quiet "$IMAP_UNIT" 2>/dev/null; then
		run systemctl disable --quiet "$IMAP_UNIT"
	fi
	run rm -f "$UNIT_DIR/$IMAP_UNIT"
	run systemctl daemon-reload
	did "IMAP_ENABLED is not true: stopped, disabled, unit removed"
else
	note "off (IMAP_ENABLED is not true)"
fi

if [[ $DRY_RUN == 1 ]]; then
	note "[dry-run] GET http://127.0.0.1:$PORT/healthz"
	exit 0
fi

say "checking http://127.0.0.1:$PORT/healthz"
for _ in $(seq 30); do
	if "$VENV/bin/python" - "$PORT" <<'PY' 2>/dev/null; then
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2) as response:
    sys.exit(json.load(response).get("status") != "ok")
PY
		say "done: $UNIT answers on 127.0.0.1:$PORT; point Caddy at it (see docs/operations.md, Production)"
		exit 0
	fi
	sleep 1
done
die "$UNIT does not answer on 127.0.0.1:$PORT/healthz after 30 s; see: journalctl -u $UNIT -n 50"
