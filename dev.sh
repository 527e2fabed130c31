#!/usr/bin/env bash
# Start the service for development on http://127.0.0.1:42010.
# Without MONGO_URI it also starts an embedded SecantusDB (DEVELOPMENT ONLY: a test server,
# not a production database) keeping its data in .dev-data/, and makes up an API key, which
# it keeps in .dev-data/api-key for the next commands.
# Operator commands against its setup: ./improvmx-archive ARGS... (`./dev.sh flask ARGS...`
# does the same, for older scripts). PORT and DEV_DB_PORT move its two ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"
exec "${VENV:-$ROOT/.venv}/bin/python" -m devtools.devserver "$@"
