"""Operator commands as a person runs them, in a subprocess: with the database down they fail
fast with one line and a hint that fits where they run, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from devtools import processes
from improvmx_archive import create_app
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests import doc_commands
from tests.conftest import make_settings

# Far above the ~3 s the commands take, far below the 30 s and more they took before with
# MONGO_TIMEOUT_MS=10000 (a wait per start-up step): only a real regression crosses it.
GENEROUS_SECONDS = 20


def _closed_port_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MONGO_", "API_KEY", "IMPROVMX_"))}
    env.update(API_KEY="operator-test-key-0123456789", MONGO_URI=f"mongodb://127.0.0.1:{processes.free_port()}/",
               SPOOL_DIR=str(tmp_path / "spool"), MONGO_TIMEOUT_MS="10000")
    env.update(extra)
    return env


def _flask(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    flask = Path(sys.executable).parent / "flask"
    return subprocess.run([str(flask), "--app", str(processes.REPO_ROOT / "app.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=GENEROUS_SECONDS)


@pytest.mark.parametrize("command", [["check"], ["import", "mail"], ["export", "out.mbox"], ["create-indexes"],
                                     ["reindex"], ["gc-blobs"], ["purge", "--before", "2025-01-01"],
                                     ["notify", "status"], ["users", "list"], ["keys", "list"]],
                         ids=lambda words: "-".join(words))
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


# --- the documented command lines, run as written through the one operator command ----------

# Documented lines that cannot run as written here (their --help still does): a running
# server to post to, a key id that is only an example.
EXAMPLES_ONLY = {("send-sample",), ("keys", "revoke")}
# What a person types (or a script pipes) into a documented command that reads it.
TYPED = {("users", "set-password"): "documented-password-1234\n" * 2}


def _dev_box_env(tmp_path: Path, uri: str, database: str) -> dict[str, str]:
    """A dev box whose .env names a database (here the test server's): the operator command
    must use it as the app would, from any directory."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MONGO_", "API_KEY", "IMPROVMX_", "SPOOL_DIR"))}
    env.update(API_KEY="documented-commands-key-0123456789", MONGO_URI=uri, MONGO_DB=database,
               DEV_DATA=str(tmp_path / "dev-data"), RATELIMIT_ENABLED="false")
    return env


def _run_documented(env, cwd, args, typed=None):
    return subprocess.run([str(doc_commands.repo_command()), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, input=typed if typed is not None else "")


def test_the_docs_show_one_operator_command_and_no_old_forms():
    assert doc_commands.outdated_lines() == []
    sources = {command.source.split(":")[0] for command in doc_commands.documented_commands()}
    assert {"README.md", "operations.md"} <= sources


@pytest.mark.slow
def test_every_documented_command_line_runs_as_written_on_a_dev_box(tmp_path, secantus_uri, secantus_db_name):
    app = create_app(make_settings(tmp_path, MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name,
                                   RATELIMIT_ENABLED="false"),
                     mongo_client=MongoClient(secantus_uri, serverSelectionTimeoutMS=5000, tz_aware=True))
    app.extensions["archive"].ingest(payload_from_mime(sample_mime()))
    env = _dev_box_env(tmp_path, secantus_uri, secantus_db_name)
    work = tmp_path / "work"
    work.mkdir()

    documented = doc_commands.documented_commands()
    paths = {}
    for command in documented:
        path = doc_commands.command_path(app, command.args)
        assert path, f"{command.source}: `improvmx-archive {' '.join(command.args)}` names no command"
        paths.setdefault(path, command)
    for path, command in paths.items():
        helped = _run_documented(env, work, [*path, "--help"])
        assert helped.returncode == 0 and "Usage:" in helped.stdout, (command.source, helped.stderr)

    ran = 0
    for command in documented:
        path = doc_commands.command_path(app, command.args)
        if path in EXAMPLES_ONLY or any("..." in word for word in command.args):  # `--anchor 1234:5f3a...`
            continue
        if path == ("import",):  # the files the example imports: this archive's own export
            shutil.copy(work / "backup.mbox", work / "previous-host.mbox")
            shutil.copytree(work / "eml", work / "old-mail")
        result = _run_documented(env, work, command.args, TYPED.get(path))
        assert result.returncode == 0, (command.source, command.args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command.source, result.stderr)
        ran += 1
    assert ran >= 10
    assert (work / "backup.mbox").read_bytes().startswith(b"From ")
    assert len(list((work / "eml").glob("*.eml"))) == 1
