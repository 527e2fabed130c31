"""gunicorn.conf.py gives each service start an empty Prometheus multiprocess directory."""

from __future__ import annotations

import os
from pathlib import Path

from devtools import processes


def _config(monkeypatch, **env: str) -> dict:
    for name in ("PROMETHEUS_MULTIPROC_DIR", "RUNTIME_DIRECTORY"):
        # setenv first so monkeypatch records the variable and also undoes what the config
        # itself writes to os.environ; a leaked directory would switch later tests' metrics
        # to multiprocess mode.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict = {}
    source = (processes.REPO_ROOT / "gunicorn.conf.py").read_text()
    exec(compile(source, "gunicorn.conf.py", "exec"), namespace)
    return namespace


def test_a_named_directory_is_emptied_of_a_previous_runs_values(monkeypatch, tmp_path):
    stale = tmp_path / "metrics" / "counter_1234.db"
    stale.parent.mkdir()
    stale.write_bytes(b"old counts")
    config = _config(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(stale.parent))
    config["_fresh_metrics_directory"]()
    assert not stale.exists() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(stale.parent)
    config["on_exit"](None)
    assert stale.parent.is_dir()  # the operator's directory is kept


def test_systemd_runtime_directory_is_used_under_the_unit(monkeypatch, tmp_path):
    config = _config(monkeypatch, RUNTIME_DIRECTORY=str(tmp_path))
    config["_fresh_metrics_directory"]()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")
    assert (tmp_path / "metrics").is_dir()


def test_without_either_a_temporary_directory_lives_as_long_as_the_master(monkeypatch):
    config = _config(monkeypatch)
    config["_fresh_metrics_directory"]()
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.is_dir()
    config["on_exit"](None)
    assert not directory.exists()
