"""Operator commands as a person runs them, in a subprocess: with the database down they fail
fast with one line and a hint that fits where they run, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import processes

# Far above the ~3 s the commands take, far below the ~17 s they took before: a bound that
# only a real regression (waiting MONGO_TIMEOUT_MS per start-up step) crosses.
GENEROUS_SECONDS = 12


def _closed_port_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MONGO_", "API_KEY", "IMPROVMX_"))}
    env.update(API_KEY="operator-test-key-0123456789", MONGO_URI=f"mongodb://127.0.0.1:{processes.free_port()}/",
               SPOOL_DIR=str(tmp_path / "spool"), MONGO_TIMEOUT_MS="5000")
    env.update(extra)
    return env


def _flask(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    flask = Path(sys.executable).parent / "flask"
    return subprocess.run([str(flask), "--app", str(processes.REPO_ROOT / "app.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=GENEROUS_SECONDS)


@pytest.mark.parametrize("command", [["check"], ["import", "mail"]])
def test_database_down_fails_fast_with_one_line_and_no_traceback(tmp_path, command):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "a.eml").write_bytes(b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    result = _flask(tmp_path, _closed_port_env(tmp_path), *command)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "MongoDB is not reachable" in errors[0] and "systemctl status mongod" in errors[0]


def test_the_hint_names_the_remote_host_but_never_its_credentials(tmp_path):
    env = _closed_port_env(tmp_path, MONGO_URI="mongodb://archive:s3cret-pw@db.invalid:27017/?authSource=admin")
    result = _flask(tmp_path, env, "check")
    assert result.returncode == 3
    assert "db.invalid:27017" in result.stderr and "s3cret" not in result.stderr + result.stdout
