"""`./dev.sh`: run the app under gunicorn, with an embedded SecantusDB when MONGO_URI is unset;
and, in a checkout, the operator command `./improvmx-archive ARGS...`: the app's `flask`
commands with the settings the dev server uses, so the docs' commands work by copy-paste.

PORT (default 42010) is where the dev server listens, DEV_DB_PORT (default 27018) where its
embedded database does; both come from the environment or `.env`. One dev server runs per
DEV_DATA directory: a second start says that one is running and exits 1 before serving.

Development only. SecantusDB is a test server; production uses a real MongoDB.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from dotenv import dotenv_values

from devtools import processes

DEFAULT_PORT = 42010
DEFAULT_DB_PORT = 27018
# DEV_DATA moves it elsewhere (tests do, so they never touch a developer's own .dev-data).
DEV_DATA = Path(os.environ.get("DEV_DATA") or processes.REPO_ROOT / ".dev-data")
# Written by the server, read by `./improvmx-archive ...` and by the README's curl lines.
API_KEY_FILE = DEV_DATA / "api-key"
ENV_FILE = DEV_DATA / "dev.env"
# Held (flock) by the running dev server; says which process serves where.
LOCK_FILE = DEV_DATA / "dev.lock"
LOG_LINES_SHOWN = 20
# Read by improvmx_archive.cli for its hints and by improvmx_archive.config for the settings file.
DEV_BOX_VARIABLE = "IMPROVMX_DEV_BOX"
ENV_FILE_VARIABLE = "IMPROVMX_ENV_FILE"


class DevError(Exception):
    """Why the dev server cannot start, said in one paragraph on the terminal."""


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


def configured() -> dict[str, str]:
    """The checkout's .env overlaid with the environment: what the app itself would read."""
    env = {k: v for k, v in dotenv_values(processes.REPO_ROOT / ".env").items() if v is not None}
    env.update(os.environ)
    return env


def port_setting(env: dict[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or str(default)).strip()
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise DevError(f"{name} must be a port number from 1024 to 65535, not {raw!r}")
    return int(raw)


def uses_embedded_database(env: dict[str, str]) -> bool:
    return not env.get("MONGO_URI") and not env.get("MONGO_HOST")


def dev_settings(env: dict[str, str]) -> dict[str, str]:
    """The settings the dev server adds to what is configured: the embedded database's URI,
    the development key, a spool in DEV_DATA and no proxy in front."""
    settings: dict[str, str] = {}
    if uses_embedded_database(env):
        settings["MONGO_URI"] = processes.mongo_uri(port_setting(env, "DEV_DB_PORT", DEFAULT_DB_PORT))
    if not env.get("API_KEY"):
        settings["API_KEY"] = development_key(None)
    settings["SPOOL_DIR"] = env.get("SPOOL_DIR") or str(DEV_DATA / "spool")
    settings["TRUSTED_PROXY_COUNT"] = env.get("TRUSTED_PROXY_COUNT") or "0"
    return settings


def in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (a bind fails; TIME_WAIT leftovers do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def hold_lock(url: str) -> IO[str]:
    """Take DEV_DATA's lock for as long as this process lives, or say who holds it."""
    DEV_DATA.mkdir(parents=True, exist_ok=True)
    handle = open(LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DevError(f"./dev.sh is already running for {DEV_DATA} ({holder}). Use that one, or stop it "
                       f"(Ctrl-C in its terminal) first. A second one needs its own DEV_DATA, PORT and "
                       f"DEV_DB_PORT.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, serving on {url}\n")
    handle.flush()
    return handle


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("    " + line for line in lines[-LOG_LINES_SHOWN:]) or "    (empty)"


def start_database(db_port: int) -> processes.ManagedProcess:
    log_path = DEV_DATA / "secantus.log"
    database = processes.secantus(DEV_DATA / "db", port=db_port, log_path=log_path)
    try:
        return database.start()
    except RuntimeError:
        raise DevError(f"the development database (SecantusDB) did not start on 127.0.0.1:{db_port}. "
                       f"The end of its log, {log_path}:\n{_log_tail(log_path)}") from None


def serve(argv: list[str]) -> int:
    env = configured()
    port = port_setting(env, "PORT", DEFAULT_PORT)
    bind = f"127.0.0.1:{port}"
    embedded = uses_embedded_database(env)
    db_port = port_setting(env, "DEV_DB_PORT", DEFAULT_DB_PORT)
    lock = hold_lock(f"http://{bind}")
    if in_use(port):
        raise DevError(f"{bind} is already in use by another program; start this one on another port, "
                       f"e.g. PORT={port + 1} ./dev.sh")
    if embedded and in_use(db_port):
        raise DevError(f"127.0.0.1:{db_port}, the development database's port, is already in use by another "
                       f"program; choose another, e.g. DEV_DB_PORT={db_port + 1} ./dev.sh")
    settings = dev_settings(env)
    child_env = {**os.environ, **settings}
    api_key = (child_env.get("API_KEY") or env.get("API_KEY") or "").split(",")[0].strip()
    _write_private(API_KEY_FILE, api_key + "\n")
    _write_private(ENV_FILE, "".join(f"{name}={value}\n" for name, value in settings.items()))

    database = None
    if embedded:
        print(f"==> DEVELOPMENT ONLY: embedded SecantusDB on 127.0.0.1:{db_port}, data in {DEV_DATA}", flush=True)
        database = start_database(db_port)
    print(f"==> serving on http://{bind}; Ctrl-C stops. In another terminal, from {processes.REPO_ROOT}:\n"
          f"    ./improvmx-archive send-sample --url http://{bind}/webhook\n"
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
        lock.close()


def operator_command(argv: list[str]) -> int:
    """The app's `flask` commands with what the dev server uses (its database, key and spool,
    as it wrote them to dev.env, else as it would), run in the caller's directory so relative
    paths mean what they say. Anything set in .env or the environment wins."""
    env = dict(os.environ)
    wanted = configured()
    remembered = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None} if ENV_FILE.is_file() else {}
    try:
        defaults = {**dev_settings(wanted), **remembered}
    except DevError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, value in defaults.items():
        if name not in wanted:
            env[name] = value
    if uses_embedded_database(wanted):
        env[DEV_BOX_VARIABLE] = "1"  # its database is the one ./dev.sh starts: the hints say so
    if (processes.REPO_ROOT / ".env").is_file():
        env.setdefault(ENV_FILE_VARIABLE, str(processes.REPO_ROOT / ".env"))
    flask = Path(sys.executable).parent / "flask"
    return subprocess.call([str(flask), "--app", str(processes.REPO_ROOT / "app.py"), *argv], env=env)


def main(argv: list[str]) -> int:
    if argv[:1] == ["flask"]:
        return operator_command(argv[1:])
    try:
        return serve(argv)
    except DevError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
