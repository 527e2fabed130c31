"""The shipped deployment files as the tools that consume them see them: gunicorn reading
gunicorn.conf.py, shellcheck, systemd-analyze on the unit, Caddy adapting the Caddyfile."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from devtools import processes
from improvmx_archive.config import Settings
from tests.deploy.helpers import require_tools

REPO = processes.REPO_ROOT
GUNICORN = str(REPO / ".venv/bin/gunicorn") if (REPO / ".venv/bin/gunicorn").exists() else "gunicorn"


def gunicorn_settings(**env: str) -> dict[str, str]:
    """The settings gunicorn ends up with for this environment (its own --print-config, which
    also imports the app: the stdlib's demo WSGI app stands in, the settings are under test)."""
    clean = {k: v for k, v in os.environ.items() if k not in {"GUNICORN_BIND", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"}}
    output = subprocess.run([GUNICORN, "--config", str(REPO / "gunicorn.conf.py"), "--print-config",
                             "wsgiref.simple_server:demo_app"],
                            env={**clean, **env}, capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^(\w+)\s+= (.*)$", output, re.M))


def test_gunicorn_defaults_suit_caddy_on_loopback():
    settings = gunicorn_settings()
    assert settings["bind"] == "['127.0.0.1:42010']"
    assert settings["worker_class"] == "gthread"
    assert int(settings["workers"]) == 2 * len(os.sched_getaffinity(0)) + 1
    assert int(settings["timeout"]) >= 120 and int(settings["graceful_timeout"]) >= 120
    assert int(settings["max_requests"]) > 0 and int(settings["max_requests_jitter"]) > 0
    assert settings["accesslog"] == "-" and settings["control_socket_disable"] == "True"


def test_gunicorn_settings_follow_the_environment_and_gunicorn_cmd_args():
    settings = gunicorn_settings(GUNICORN_BIND="127.0.0.1:5001,unix:/run/x.sock", WEB_CONCURRENCY="3")
    assert settings["bind"] == "['127.0.0.1:5001', 'unix:/run/x.sock']" and settings["workers"] == "3"
    settings = gunicorn_settings(GUNICORN_BIND="127.0.0.1:5001",
                                 GUNICORN_CMD_ARGS="--bind 127.0.0.1:5002 --threads 8 --timeout 300")
    assert (settings["bind"], settings["threads"], settings["timeout"]) == ("['127.0.0.1:5002']", "8", "300")


@pytest.fixture
def gunicorn_logger():
    """Make gunicorn's logger as gunicorn.conf.py configures it; returns it and what it logs."""
    buffers = []

    def make(access_log_format: str | None = None):
        cfg = Config()
        namespace: dict = {}
        exec(compile((REPO / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)
        cfg.set("logger_class", namespace["logger_class"])
        cfg.set("accesslog", "-")
        cfg.set("access_log_format", access_log_format or namespace["access_log_format"])
        logger = cfg.logger_class(cfg)
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        for log in (logger.access_log, logger.error_log):
            log.addHandler(handler)
        buffers.append((logger, handler))
        return logger, buffer

    yield make
    for logger, handler in buffers:
        for log in (logger.access_log, logger.error_log):
            log.removeHandler(handler)
            log.filters.clear()


def _access(logger, path: str) -> None:
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": path, "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "203.0.113.7",
               "HTTP_AUTHORIZATION": "Bearer top-secret-api-key"}
    request = SimpleNamespace(headers=[("AUTHORIZATION", "Bearer top-secret-api-key"),
                                       ("X-FORWARDED-FOR", "203.0.113.7")])
    response = SimpleNamespace(status="200 OK", sent=17, headers=[("X-Request-ID", "rid-1234567")])
    logger.access(response, request, environ, timedelta(milliseconds=3))


def test_access_log_masks_the_webhook_secret_and_shows_the_client(gunicorn_logger):
    logger, buffer = gunicorn_logger()
    _access(logger, "/webhook/s3cr3t-s3cr3t-s3cr3t")
    line = buffer.getvalue()
    assert line.startswith('203.0.113.7 "POST /webhook/*** HTTP/1.1" 200 17 ')
    assert 'xff="203.0.113.7" rid=rid-1234567' in line and "s3cr3t" not in line


def test_no_access_log_format_can_print_credentials(gunicorn_logger):
    logger, buffer = gunicorn_logger('%({authorization}i)s|%({http_authorization}e)s|%(U)s|%({raw_uri}e)s')
    _access(logger, "/webhook/s3cr3t-s3cr3t-s3cr3t")
    assert buffer.getvalue().strip() == "-|-|/webhook/***|/webhook/***"


def test_error_log_masks_the_webhook_secret(gunicorn_logger):
    logger, buffer = gunicorn_logger()
    try:
        raise OSError("connection reset")
    except OSError:
        logger.exception("Error handling request %s %s", "POST", "/webhook/s3cr3t-s3cr3t-s3cr3t?x=1")
    assert "Error handling request POST /webhook/***?x=1" in buffer.getvalue()
    assert "s3cr3t" not in buffer.getvalue()


def test_shellcheck_passes_on_both_scripts():
    require_tools("shellcheck")
    result = subprocess.run(["shellcheck", "--external-sources", "install_service.sh", "uninstall_service.sh",
                             "scripts/service_lib.sh"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_shellcheck_passes_on_the_operator_command():
    require_tools("shellcheck")
    result = subprocess.run(["shellcheck", "improvmx-archive"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("unit", ["improvmx-webhook.service", "improvmx-imap.service"])
def test_unit_rates_ok_or_better_in_systemd_analyze_security(unit):
    require_tools("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(REPO / unit)],
                            capture_output=True, text=True)
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze cannot rate unit files offline: {result.stderr.strip()}")
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert score.group(2) in {"PERFECT", "SAFE", "OK"} and float(score.group(1)) <= 2.0, score.group(0)


def _caddy(command: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data"), **env}
    return subprocess.run(["caddy", command, "--config", str(REPO / "Caddyfile"), "--adapter", "caddyfile"],
                          env=env, capture_output=True, text=True)


@pytest.mark.parametrize("env", [
    {"IMPROVMX_DOMAIN": "webhook.example.com"},
    {"IMPROVMX_DOMAIN": "webhook.example.com", "IMPROVMX_UPSTREAMS": "10.0.0.11:42010 10.0.0.12:42010"},
], ids=["one-host", "scaled-out"])
def test_caddy_validate_passes_on_the_shipped_caddyfile(tmp_path, env):
    require_tools("caddy")
    result = _caddy("validate", tmp_path, **env)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr


def test_caddy_body_cap_is_the_apps_default(tmp_path):
    require_tools("caddy")
    result = _caddy("adapt", tmp_path, IMPROVMX_DOMAIN="webhook.example.com")
    config = json.loads(result.stdout)
    handlers = json.dumps(config["apps"]["http"]["servers"])
    app_limit = Settings.from_env({"API_KEY": "k" * 16, "MONGO_URI": "mongodb://db/"}, dotenv_path=None).max_body_bytes
    assert f'"max_size": {app_limit}' in handlers
    assert "> 70 * 1048576" in handlers and 70 * 1048576 == app_limit
    assert '"dial": "127.0.0.1:42010"' in handlers
