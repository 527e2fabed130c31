#!/usr/bin/env bash
# Run the whole test suite: unit tests on mongomock, integration tests over real sockets
# (SecantusDB, gunicorn with several workers, Caddy). Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"

missing=()
command -v caddy >/dev/null || missing+=(caddy)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
[[ -d /usr/share/fonts/truetype/dejavu ]] || missing+=(fonts-dejavu-core)
command -v mutt >/dev/null || missing+=(mutt)
command -v openssl >/dev/null || missing+=(openssl)
command -v mbsync >/dev/null || missing+=(isync)
[[ -x /usr/sbin/dovecot ]] || missing+=(dovecot-imapd)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    echo "==> installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

exec "$ROOT/.venv/bin/python" -m pytest "$@"
