"""The README's quick start, run as written: `./dev.sh` serves, keeps its key where the next
commands find it, and `./improvmx-archive send-sample` plus a curl with that key see the message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from devtools import processes

pytestmark = pytest.mark.slow


@pytest.fixture
def dev_env(tmp_path, secantus_uri, secantus_db_name):
    env = {key: value for key, value in os.environ.items() if key not in ("API_KEY", "MONGO_HOST")}
    env.update(DEV_DATA=str(tmp_path / "dev-data"), MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name,
               PORT=str(processes.free_port()))
    return env


def _devserver(env, *args, **options):
    return subprocess.Popen([sys.executable, "-m", "devtools.devserver", *args], cwd=processes.REPO_ROOT,
                            env=env, start_new_session=True, **options)


def test_quick_start_by_copy_paste(dev_env, tmp_path):
    port = int(dev_env["PORT"])
    log = open(tmp_path / "dev.log", "wb")
    server = _devserver(dev_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        processes.wait_for_port(port, timeout=60)
        key_file = tmp_path / "dev-data" / "api-key"
        key = key_file.read_text().strip()
        assert len(key) >= 16 and oct(key_file.stat().st_mode & 0o777) == "0o600"

        sent = subprocess.run([str(processes.REPO_ROOT / "improvmx-archive"), "send-sample",
                               "--url", f"http://127.0.0.1:{port}/webhook"],
                              cwd=tmp_path, env=dev_env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert '"success":true' in sent.stdout.replace(" ", "")

        request = urllib.request.Request(f"http://127.0.0.1:{port}/emails",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            listing = json.load(response)
        assert listing["count"] == 1
        assert str(key_file) in (tmp_path / "dev.log").read_text()
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert server.returncode == 0


def test_a_restart_keeps_the_development_key(dev_env, tmp_path):
    key_file = tmp_path / "dev-data" / "api-key"
    keys = []
    for _ in range(2):
        server = _devserver(dev_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            processes.wait_for_port(int(dev_env["PORT"]), timeout=60)
            keys.append(key_file.read_text().strip())
        finally:
            server.terminate()
            server.wait(30)
    assert keys[0] == keys[1]


# --- ports, a second start, a database that cannot start ---------------------------------

def _start_and_wait(env, *args, timeout=90):
    return subprocess.run([sys.executable, "-m", "devtools.devserver", *args], cwd=processes.REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _embedded(dev_env) -> dict[str, str]:
    """The environment of a dev box without MONGO_URI: ./dev.sh starts its own database."""
    env = {key: value for key, value in dev_env.items() if key != "MONGO_URI"}
    env["DEV_DB_PORT"] = str(processes.free_port())
    return env


def test_a_second_dev_server_says_the_first_is_running_before_serving(dev_env):
    port = int(dev_env["PORT"])
    first = _devserver(dev_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        processes.wait_for_port(port, timeout=60)
        second = _start_and_wait(dev_env)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr and f"serving on http://127.0.0.1:{port}" in second.stderr
        assert "==> serving on" not in second.stdout and "Address already in use" not in second.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200  # the first one is untouched
    finally:
        first.terminate()
        first.wait(30)


def test_a_port_held_by_another_program_is_named_with_the_setting_to_change(dev_env):
    port = int(dev_env["PORT"])
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen(1)
        result = _start_and_wait(dev_env)
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr and f"PORT={port + 1} ./dev.sh" in result.stderr
    assert "==> serving on" not in result.stdout


def test_the_embedded_database_listens_on_dev_db_port_and_commands_find_it(dev_env, tmp_path):
    env = _embedded(dev_env)
    db_port = int(env["DEV_DB_PORT"])
    log = open(tmp_path / "dev.log", "wb")
    server = _devserver(env, stdout=log, stderr=subprocess.STDOUT)
    try:
        processes.wait_for_port(int(env["PORT"]), timeout=90)
        processes.wait_for_port(db_port, timeout=5)
        assert f"127.0.0.1:{db_port}" in (tmp_path / "dev-data" / "dev.env").read_text()
        assert f"embedded SecantusDB on 127.0.0.1:{db_port}" in (tmp_path / "dev.log").read_text()
        checked = subprocess.run([str(processes.REPO_ROOT / "improvmx-archive"), "check"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith("ok: configuration valid, MongoDB reachable")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_a_database_that_cannot_start_is_shown_on_the_terminal(dev_env, tmp_path):
    env = _embedded(dev_env)
    damaged = tmp_path / "dev-data" / "db"
    damaged.mkdir(parents=True)
    (damaged / "WiredTiger.basecfg").write_bytes(b"not a configuration \xf9\xfa\n")
    result = _start_and_wait(env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the development database (SecantusDB) did not start on 127.0.0.1:{env['DEV_DB_PORT']}" in result.stderr
    assert "secantus.log" in result.stderr and "Error" in result.stderr  # the end of its log, shown here
    assert "==> serving on" not in result.stdout


def test_a_command_without_a_running_dev_server_says_to_start_it(dev_env, tmp_path):
    env = _embedded(dev_env)  # nothing listens on DEV_DB_PORT
    result = subprocess.run([str(processes.REPO_ROOT / "improvmx-archive"), "check"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "start the development server and its database with ./dev.sh" in result.stderr
    assert "Traceback" not in result.stderr
