# shellcheck shell=bash
# Output and dry-run helpers shared by install_service.sh and uninstall_service.sh (sourced).

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
	printf '%s: error: %s\n' "${0##*/}" "$*" >&2
	exit 1
}
# Report something done (silent under --dry-run, where run already showed it).
did() { [[ $DRY_RUN == 1 ]] || note "$@"; }
# Run a command that changes the system, or only show it under --dry-run.
run() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '    [dry-run]'
		printf ' %q' "$@"
		printf '\n'
	else
		"$@"
	fi
}
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
