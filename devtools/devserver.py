"""`./dev.sh`: run the app under gunicorn, with an embedded SecantusDB when MONGO_URI is unset.

`./dev.sh flask ARGS...` runs an operator command (`send-sample`, `spool status`, ...) with the
environment of the running dev server, so the quick start works by copy-paste.

Development only. SecantusDB is a test server; production uses a real MongoDB.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from dotenv import dotenv_values

from devtools import processes

DEV_DB_PORT = 27018
# DEV_DATA moves it elsewhere (tests do, so they never touch a developer's own .dev-data).
DEV_DATA = Path(os.environ.get("DEV_DATA") or processes.REPO_ROOT / ".dev-data")
# Written by the server, read by `./dev.sh flask ...` and by the README's curl lines.
API_KEY_FILE = DEV_DATA / "api-key"
ENV_FILE = DEV_DATA / "dev.env"


def _write_private(path: Path, text: str) -> None:
    """A file only the developer can read: it holds the development API key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def development_key(configured: str | None) -> str:
    """The configured key, else the one an earlier run made up (so scripts keep working across
    restarts), else a new one."""
    if configured:
        return configured
    if API_KEY_FILE.is_file():
        remembered = API_KEY_FILE.read_text().strip()
        if len(remembered) >= 16:
            return remembered
    return "dev-" + secrets.token_urlsafe(24)


def serve(argv: list[str]) -> int:
    env = {k: v for k, v in dotenv_values(processes.REPO_ROOT / ".env").items() if v is not None}
    env.update(os.environ)
    child_env = dict(os.environ)
    dev_settings: dict[str, str] = {}
    database = None
    if not env.get("MONGO_URI") and not env.get("MONGO_HOST"):
        print(f"==> DEVELOPMENT ONLY: embedded SecantusDB on 127.0.0.1:{DEV_DB_PORT}, data in {DEV_DATA}",
              flush=True)
        dev_settings["MONGO_URI"] = processes.mongo_uri(DEV_DB_PORT)
    if not env.get("API_KEY"):
        dev_settings["API_KEY"] = development_key(None)
    dev_settings.setdefault("SPOOL_DIR", env.get("SPOOL_DIR") or str(DEV_DATA / "spool"))
    dev_settings.setdefault("TRUSTED_PROXY_COUNT", env.get("TRUSTED_PROXY_COUNT") or "0")
    child_env.update(dev_settings)
    api_key = (child_env.get("API_KEY") or env.get("API_KEY") or "").split(",")[0].strip()
    _write_private(API_KEY_FILE, api_key + "\n")
    _write_private(ENV_FILE, "".join(f"{name}={value}\n" for name, value in dev_settings.items()))

    port = env.get("PORT", "42010")
    bind = f"127.0.0.1:{port}"
    if "MONGO_URI" in dev_settings:
        database = processes.secantus(DEV_DATA / "db", port=DEV_DB_PORT, log_path=DEV_DATA / "secantus.log")
        database.start()
    print(f"==> serving on http://{bind}; Ctrl-C stops. In another terminal, from {processes.REPO_ROOT}:\n"
          f"    ./dev.sh flask send-sample --url http://{bind}/webhook\n"
          f"    curl -H \"Authorization: Bearer $(cat {API_KEY_FILE})\" http://{bind}/emails", flush=True)
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", str(processes.REPO_ROOT / "gunicorn.conf.py"),
                "--bind", bind, "--workers", "2", *argv, "app:app"]
    # A plain SIGTERM (systemd, `timeout`, a closing terminal) must still run the clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = subprocess.Popen(gunicorn, cwd=processes.REPO_ROOT, env=child_env)
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


def flask_command(argv: list[str]) -> int:
    """An operator command against the dev server's database, with its key and spool."""
    env = dict(os.environ)
    if ENV_FILE.is_file():
        for name, value in dotenv_values(ENV_FILE).items():
            if value is not None:
                env.setdefault(name, value)
    flask = Path(sys.executable).parent / "flask"
    return subprocess.call([str(flask), "--app", "app", *argv], cwd=processes.REPO_ROOT, env=env)


def main(argv: list[str]) -> int:
    if argv[:1] == ["flask"]:
        return flask_command(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
