"""The README's quick start, run as written: `./dev.sh` serves, keeps its key where the next
commands find it, and `./dev.sh flask send-sample` plus a curl with that key see the message."""

from __future__ import annotations

import json
import os
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

        sent = subprocess.run([sys.executable, "-m", "devtools.devserver", "flask", "send-sample",
                               "--url", f"http://127.0.0.1:{port}/webhook"],
                              cwd=processes.REPO_ROOT, env=dev_env, capture_output=True, text=True, timeout=60)
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
