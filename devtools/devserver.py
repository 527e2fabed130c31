"""`./dev.sh`: run the app under gunicorn, with an embedded SecantusDB when MONGO_URI is unset.

Development only. SecantusDB is a test server; production uses a real MongoDB.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

from dotenv import dotenv_values

from devtools import processes

DEV_DB_PORT = 27018
DEV_DATA = processes.REPO_ROOT / ".dev-data"


def main() -> int:
    env = {k: v for k, v in dotenv_values(processes.REPO_ROOT / ".env").items() if v is not None}
    env.update(os.environ)
    child_env = dict(os.environ)
    database = None
    if not env.get("MONGO_URI") and not env.get("MONGO_HOST"):
        print(f"==> DEVELOPMENT ONLY: embedded SecantusDB on 127.0.0.1:{DEV_DB_PORT}, data in {DEV_DATA}",
              flush=True)
        database = processes.secantus(DEV_DATA / "db", port=DEV_DB_PORT, log_path=DEV_DATA / "secantus.log")
        database.start()
        child_env["MONGO_URI"] = processes.mongo_uri(DEV_DB_PORT)
    if not env.get("API_KEY"):
        child_env["API_KEY"] = "dev-" + secrets.token_urlsafe(24)
        print(f"==> API_KEY not set; this run's development key: {child_env['API_KEY']}", flush=True)
    child_env.setdefault("SPOOL_DIR", str(DEV_DATA / "spool"))
    child_env.setdefault("TRUSTED_PROXY_COUNT", "0")
    bind = f"127.0.0.1:{env.get('PORT', '42010')}"
    print(f"==> serving on http://{bind} (try: curl http://{bind}/healthz); Ctrl-C stops", flush=True)
    argv = [sys.executable, "-m", "gunicorn", "--config", str(processes.REPO_ROOT / "gunicorn.conf.py"),
            "--bind", bind, "--workers", "2", "app:app"]
    # A plain SIGTERM (systemd, `timeout`, a closing terminal) must still run the clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = subprocess.Popen(argv, cwd=processes.REPO_ROOT, env=child_env)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)
        if database:
            database.stop()


if __name__ == "__main__":
    sys.exit(main())
