#!/usr/bin/env bash
# Remove the ImprovMX Webhook Archive service installed by install_service.sh.
#
# By default only the unit, the code and the virtualenv go: .env, the state directory (the
# spool of messages not yet in MongoDB) and the service user stay, and the script lists
# them. --purge removes those too. MongoDB data is never touched.
set -euo pipefail

usage() {
	cat <<EOF
Usage: sudo $0 [options]

  --install-dir DIR  as given to install_service.sh  [\$IMPROVMX_INSTALL_DIR, /opt/improvmx-webhook]
  --user NAME        the service user  [\$IMPROVMX_USER, improvmx]
  --unit-dir DIR     where the unit file is  [\$IMPROVMX_UNIT_DIR, /etc/systemd/system]
  --bin-dir DIR      where the operator command improvmx-archive is  [\$IMPROVMX_BIN_DIR, /usr/local/bin]
  --state-dir DIR    the unit's StateDirectory  [\$IMPROVMX_STATE_DIR, /var/lib/improvmx-webhook]
  --purge            also delete .env, the state directory and the service user
  --force            with --purge: delete even messages still waiting in the spool
  --dry-run          print what would be done, change nothing  [\$IMPROVMX_DRY_RUN=1]
  -h, --help         this text
EOF
}

INSTALL_DIR=${IMPROVMX_INSTALL_DIR:-/opt/improvmx-webhook}
SERVICE_USER=${IMPROVMX_USER:-improvmx}
UNIT_DIR=${IMPROVMX_UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${IMPROVMX_BIN_DIR:-/usr/local/bin}
STATE_DIR=${IMPROVMX_STATE_DIR:-/var/lib/improvmx-webhook}
DRY_RUN=${IMPROVMX_DRY_RUN:-0}
PURGE=0 FORCE=0

UNIT=improvmx-webhook.service
# Everything install_service.sh puts into the install directory except .env.
INSTALLED=(app.py gunicorn.conf.py requirements.txt improvmx_archive .venv __pycache__)

# shellcheck source=scripts/service_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/service_lib.sh"

while [[ $# -gt 0 ]]; do
	case $1 in
	--install-dir) need_value "$@"; INSTALL_DIR=$2; shift 2 ;;
	--user) need_value "$@"; SERVICE_USER=$2; shift 2 ;;
	--unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
	--bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
	--state-dir) need_value "$@"; STATE_DIR=$2; shift 2 ;;
	--purge) PURGE=1; shift ;;
	--force) FORCE=1; shift ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option: $1" ;;
	esac
done

# These paths are deleted from: refuse anything but a plain absolute path below /.
for dir in "$INSTALL_DIR" "$UNIT_DIR" "$STATE_DIR" "$BIN_DIR"; do
	[[ $dir =~ ^/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ && $dir != *..* ]] ||
		die "refusing path $dir: give an absolute path below / without '..'"
done
[[ $SERVICE_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ && $SERVICE_USER != root ]] ||
	die "--user must be a lower-case account name other than root: $SERVICE_USER"
[[ $FORCE == 0 || $PURGE == 1 ]] || die "--force only makes sense with --purge"

[[ $DRY_RUN == 1 ]] && say "dry run: nothing will be changed"
[[ $DRY_RUN == 1 || $EUID -eq 0 ]] || die "run as root, e.g. sudo $0"

spooled=0
if [[ -d $STATE_DIR ]]; then
	spooled=$(find "$STATE_DIR" -type f -name '*.json' | wc -l)
fi
if [[ $PURGE == 1 && $spooled -gt 0 && $FORCE == 0 ]]; then
	die "$STATE_DIR holds $spooled spooled message(s) not yet in MongoDB: let the service replay" \
		"them into MongoDB first, or add --force to delete them"
fi

say "service $UNIT"
if command -v systemctl >/dev/null; then
	if systemctl is-active --quiet "$UNIT" 2>/dev/null; then
		run systemctl stop "$UNIT"
	fi
	if systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then
		run systemctl disable --quiet "$UNIT"
	fi
fi
if [[ -f $UNIT_DIR/$UNIT ]]; then
	run rm -f "$UNIT_DIR/$UNIT"
	if command -v systemctl >/dev/null; then
		run systemctl daemon-reload
	fi
	did "stopped, disabled, unit removed"
else
	note "no unit file at $UNIT_DIR/$UNIT"
fi

# Only the command install_service.sh wrote (it names itself so), never someone else's.
if grep -qs '^# Written by install_service.sh' "$BIN_DIR/improvmx-archive"; then
	run rm -f "$BIN_DIR/improvmx-archive"
	did "removed the operator command $BIN_DIR/improvmx-archive"
fi

IMAP_UNIT=improvmx-imap.service
if [[ -f $UNIT_DIR/$IMAP_UNIT ]]; then
	say "service $IMAP_UNIT"
	if command -v systemctl >/dev/null; then
		if systemctl is-active --quiet "$IMAP_UNIT" 2>/dev/null; then
			run systemctl stop "$IMAP_UNIT"
		fi
		if systemctl is-enabled --quiet "$IMAP_UNIT" 2>/dev/null; then
			run systemctl disable --quiet "$IMAP_UNIT"
		fi
	fi
	run rm -f "$UNIT_DIR/$IMAP_UNIT"
	if command -v systemctl >/dev/null; then
		run systemctl daemon-reload
	fi
	did "stopped, disabled, unit removed"
fi

say "application in $INSTALL_DIR"
removed=0
for item in "${INSTALLED[@]}"; do
	if [[ -e $INSTALL_DIR/$item ]]; then
		run rm -rf "${INSTALL_DIR:?}/$item"
		removed=1
	fi
done
if [[ $removed == 1 ]]; then did "removed the code and the virtualenv"; else note "no code installed"; fi
left=()
if [[ -f $INSTALL_DIR/.env ]]; then
	if [[ $PURGE == 1 ]]; then
		run rm -f "$INSTALL_DIR/.env"
	else
		left+=("$INSTALL_DIR/.env (your configuration and secrets)")
	fi
fi
if [[ -d $INSTALL_DIR && $DRY_RUN == 0 ]]; then
	if rmdir "$INSTALL_DIR" 2>/dev/null; then
		note "removed $INSTALL_DIR"
	elif [[ $PURGE == 1 ]]; then
		left+=("$INSTALL_DIR (holds files the installer did not put there)")
	fi
fi

if [[ -d $STATE_DIR ]]; then
	if [[ $PURGE == 1 ]]; then
		run rm -rf "$STATE_DIR"
		did "removed $STATE_DIR ($spooled spooled message(s))"
	else
		left+=("$STATE_DIR (the spool: $spooled message(s) not yet in MongoDB)")
	fi
fi

if id -u "$SERVICE_USER" >/dev/null 2>&1; then
	if [[ $PURGE == 1 && $(id -u "$SERVICE_USER") -lt 1000 ]]; then
		run userdel "$SERVICE_USER"
		did "removed user $SERVICE_USER"
	elif [[ $PURGE == 1 ]]; then
		left+=("user $SERVICE_USER (uid 1000 or above: not a system account, so not deleted)")
	else
		left+=("user $SERVICE_USER")
	fi
fi

say "done"
if [[ ${#left[@]} -gt 0 ]]; then
	note "left in place:"
	for item in "${left[@]}"; do
		note "  $item"
	done
fi
note "MongoDB and its data were not touched."
