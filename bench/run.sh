#!/usr/bin/env bash
# The whole benchmark in one command, on a fresh machine too:
#   bench/run.sh            full run (~30-40 min on 2 cores), tables in bench/results/latest.md
#   bench/run.sh --quick    a few minutes, to check the suite works
# Any argument goes to `python -m bench` (see --help).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"
VENV="${VENV:-$ROOT/.venv}"
stamp="$VENV/.bench-requirements.sha256"
wanted="$(sha256sum "$ROOT/bench/requirements.txt" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "==> installing bench/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/bench/requirements.txt"
    echo "$wanted" > "$stamp"
fi
exec "$VENV/bin/python" -m bench "$@"
