"""The shipped gunicorn.conf.py under a real gunicorn: a configuration error stops the master
before any worker is forked, a booting worker obeys SIGTERM, no worker outlives a SIGKILLed
master, and workers share the code the master imported while a HUP still loads new code."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools import processes

pytestmark = pytest.mark.slow

API_KEY = "lifecycle-key-0123456789abcdef"
STOP_SIGNAL_BITS = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGQUIT - 1))


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("API_KEY", "MONGO_", "GUNICORN"))}
    env.update(API_KEY=API_KEY, RATELIMIT_STORAGE_URI="memory://", SPOOL_DIR=str(tmp_path / "spool"),
               BACKGROUND_TASKS="false", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.update(overrides)
    return env


def _gunicorn(env: dict[str, str], *args: str, **options) -> subprocess.Popen:
    argv = [str(Path(sys.executable).parent / "gunicorn"), "--config", str(processes.REPO_ROOT / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{processes.free_port()}", *args, "app:app"]
    return subprocess.Popen(argv, cwd=processes.REPO_ROOT, env=env, start_new_session=True, **options)


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _alive(pid: int) -> bool:
    state = _status(pid).get("State", "")
    return bool(state) and not state.startswith(("Z", "X"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _status(int(entry.name)).get("PPid", "").strip() == str(pid):
            found.append(int(entry.name))
    return found


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def unanswering_mongo():
    """A port that accepts connections and never answers: MongoDB hanging, so a worker's
    start-up (which confirms the indexes) stays in its boot for as long as the timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"mongodb://127.0.0.1:{listener.getsockname()[1]}/?directConnection=true"
    listener.close()


@pytest.mark.parametrize("broken", [{"API_KEY": ""}, {"API_KEY": "short"}, {"MONGO_URI": "http://db/"}],
                         ids=["empty-key", "short-key", "bad-uri"])
def test_a_configuration_error_stops_the_master_before_any_worker(tmp_path, broken):
    env = _env(tmp_path, **{"MONGO_URI": "mongodb://127.0.0.1:1/", **broken})
    started = time.monotonic()
    master = _gunicorn(env, "--workers", "2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = master.communicate(timeout=30)
    assert master.returncode == 2, output
    assert time.monotonic() - started < 15
    assert "improvmx-webhook: configuration error:" in output
    assert "Booting worker" not in output and API_KEY not in output


def test_flask_stops_on_a_configuration_error(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "app", "check"],
                            cwd=processes.REPO_ROOT, env=_env(tmp_path, API_KEY="", MONGO_URI="mongodb://db/"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("improvmx-webhook: configuration error: API_KEY")


def test_dev_sh_stops_on_a_configuration_error(tmp_path):
    env = _env(tmp_path, API_KEY="short", MONGO_URI="mongodb://127.0.0.1:1/", DEV_DATA=str(tmp_path / "dev"),
               PORT=str(processes.free_port()))
    result = subprocess.run([sys.executable, "-m", "devtools.devserver"], cwd=processes.REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "improvmx-webhook: configuration error: API_KEY" in result.stderr


def test_a_booting_worker_obeys_sigterm(tmp_path, unanswering_mongo):
    env = _env(tmp_path, MONGO_URI=unanswering_mongo, MONGO_TIMEOUT_MS="60000")
    log = open(tmp_path / "gunicorn.log", "wb")
    master = _gunicorn(env, "--workers", "2", stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: len(_children(master.pid)) == 2, 20), (tmp_path / "gunicorn.log").read_text()
        workers = _children(master.pid)
        time.sleep(1.0)  # well inside their boot: each waits up to 60 s for MongoDB
        for pid in workers:
            assert int(_status(pid)["SigBlk"], 16) & STOP_SIGNAL_BITS == 0
        os.kill(workers[0], signal.SIGTERM)
        assert _wait(lambda: not _alive(workers[0]), 5), "a booting worker ignored SIGTERM"
        started = time.monotonic()
        master.terminate()
        master.wait(15)
        assert time.monotonic() - started < 10
        assert _wait(lambda: not any(_alive(pid) for pid in workers), 5)
    finally:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
        log.close()


@pytest.mark.parametrize("phase", ["booted", "booting"])
def test_no_worker_outlives_a_killed_master(tmp_path, phase, secantus_uri, secantus_db_name, unanswering_mongo):
    uri = secantus_uri if phase == "booted" else unanswering_mongo
    env = _env(tmp_path, MONGO_URI=uri, MONGO_DB=secantus_db_name, MONGO_TIMEOUT_MS="60000")
    log = open(tmp_path / "gunicorn.log", "wb")
    master = _gunicorn(env, "--workers", "2", stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: len(_children(master.pid)) == 2, 20), (tmp_path / "gunicorn.log").read_text()
        workers = _children(master.pid)
        if phase == "booted":
            assert _wait(lambda: (tmp_path / "gunicorn.log").read_text().count("Booting worker") == 2, 20)
            time.sleep(2.0)
        os.kill(master.pid, signal.SIGKILL)
        master.wait(5)
        assert _wait(lambda: not any(_alive(pid) for pid in workers), 10), [_status(p) for p in workers]
    finally:
        for pid in _children(master.pid):
            os.kill(pid, signal.SIGKILL)
        log.close()


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _own_share(pid: int) -> float:
    """The part of a process's resident memory that is its own (USS / RSS)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split()[:2]
        values[name.rstrip(":")] = int(value)
    return (values["Private_Clean"] + values["Private_Dirty"]) / values["Rss"]


@contextlib.contextmanager
def _served_copy(tmp_path: Path, env: dict[str, str], *args: str):
    """gunicorn serving a copy of the application's tree (to be changed on disk): (master, port, tree)."""
    tree = tmp_path / "tree"
    shutil.copytree(processes.REPO_ROOT / "improvmx_archive", tree / "improvmx_archive",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("app.py", "gunicorn.conf.py"):
        shutil.copy(processes.REPO_ROOT / name, tree / name)
    port = processes.free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    argv = [str(Path(sys.executable).parent / "gunicorn"), "--config", str(tree / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{port}", *args, "app:app"]
    master = subprocess.Popen(argv, cwd=tree, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: _get(port, "/healthz")[0] == 200, 60), (tmp_path / "gunicorn.log").read_text()
        yield master, port, tree
    finally:
        master.terminate()
        try:
            master.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
        log.close()


def _change_a_route(tree: Path) -> Path:
    health = tree / "improvmx_archive" / "routes" / "health.py"
    health.write_text(health.read_text().replace('jsonify(status="ok")', 'jsonify(status="ok", code="reloaded")'))
    return health


def _serves_the_change(port: int) -> bool:
    return json.loads(_get(port, "/healthz")[1] or b"{}").get("code") == "reloaded"


def test_workers_share_the_code_and_a_reload_serves_the_code_now_on_disk(tmp_path, secantus_uri, secantus_db_name):
    """The master imports the application's modules for its workers to share; a HUP must
    still bring the code changed on disk into the new workers, and the re-imported metrics
    must still be served."""
    env = _env(tmp_path, MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name, RATELIMIT_ENABLED="false")
    with _served_copy(tmp_path, env, "--workers", "2") as (master, port, tree):
        assert _wait(lambda: len(_children(master.pid)) == 2, 20)
        first = _children(master.pid)
        log = tmp_path / "gunicorn.log"

        def both_answered() -> bool:
            """Each worker has built its app once its pid is in the app's request log."""
            _get(port, "/healthz")
            text = log.read_text()
            return all(f"[{pid}] INFO improvmx_archive.request" in text for pid in first)

        assert _wait(both_answered, 30), log.read_text()
        # A worker that imported the code itself holds ~3/4 of its pages alone; sharing, well under half.
        assert all(_own_share(pid) < 0.5 for pid in first), [_own_share(pid) for pid in first]

        _change_a_route(tree)
        os.kill(master.pid, signal.SIGHUP)
        assert _wait(lambda: _serves_the_change(port) and not any(_alive(pid) for pid in first), 60), \
            (tmp_path / "gunicorn.log").read_text()
        status, body = _get(port, "/metrics", {"Authorization": f"Bearer {API_KEY}"})
        assert status == 200 and b"improvmx_http_requests" in body
        assert master.poll() is None


def test_with_reload_the_master_shares_nothing_so_a_changed_file_is_served(tmp_path, secantus_uri, secantus_db_name):
    """`./dev.sh --reload`: gunicorn restarts a worker from the master when a file changes, so
    a master holding the code would hand it the old one."""
    env = _env(tmp_path, MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name, RATELIMIT_ENABLED="false")
    with _served_copy(tmp_path, env, "--workers", "1", "--reload") as (master, port, tree):
        changed = _change_a_route(tree)
        # The reloader notes each file's state when it starts, some time after the worker
        # answers: a change made before that is its starting point. Touch the file again each
        # second until the change is served.
        touched = [time.monotonic()]

        def served_or_touched() -> bool:
            if _serves_the_change(port):
                return True
            if time.monotonic() - touched[0] >= 1.0:
                os.utime(changed)
                touched[0] = time.monotonic()
            return False

        assert _wait(served_or_touched, 60), (tmp_path / "gunicorn.log").read_text()
