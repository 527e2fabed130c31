"""Settings: every operator mistake stops start-up with one line naming the variable."""

import subprocess
import sys

import pytest

from devtools.processes import REPO_ROOT
from improvmx_archive.config import ConfigError, Settings

BASE = {"API_KEY": "k" * 20, "MONGO_URI": "mongodb://db.example:27017/"}


def settings(**env):
    return Settings.from_env({**BASE, **env}, dotenv_path=None)


def test_defaults():
    s = settings()
    assert s.mongo_db == "webmail_improvmx" and s.api_keys == ("k" * 20,)
    assert s.max_body_bytes == 70 * 1024 * 1024 and s.trusted_proxy_count == 1
    assert s.ratelimit_enabled and s.ratelimit_storage_uri == BASE["MONGO_URI"]
    assert s.limits["RATELIMIT_LIST"] == "20 per minute" and s.domains == ()


def test_several_keys_and_domains():
    s = settings(API_KEY=" a" * 1 + "a" * 20 + ", " + "b" * 20, DOMINIO="Example.com, @other.test")
    assert s.api_keys == ("a" * 21, "b" * 20)
    assert s.domains == ("example.com", "other.test")


def test_guide_style_credentials_are_percent_encoded():
    s = Settings.from_env({"API_KEY": "k" * 20, "MONGO_USER": "us@r", "MONGO_PASS": "p:ss/w@rd%",
                           "MONGO_HOST": "db:27017"}, dotenv_path=None)
    assert s.mongo_uri == "mongodb://us%40r:p%3Ass%2Fw%40rd%25@db:27017/"


@pytest.mark.parametrize("env, message", [
    ({"API_KEY": ""}, "API_KEY is not set"),
    ({"API_KEY": "short"}, "API_KEY: every key must be at least 16 characters long"),
    ({"MONGO_URI": ""}, "Set MONGO_URI"),
    ({"MONGO_URI": "http://x"}, "MONGO_URI must start with mongodb://"),
    ({"MAX_BODY_MB": "lots"}, "MAX_BODY_MB must be a number"),
    ({"MAX_BODY_MB": "70.5"}, "MAX_BODY_MB must be a whole number of megabytes"),
    ({"TRUSTED_PROXY_COUNT": "-1"}, "TRUSTED_PROXY_COUNT must be at least 0"),
    ({"RATELIMIT_ENABLED": "perhaps"}, "RATELIMIT_ENABLED must be true or false"),
    ({"RATELIMIT_LIST": "often"}, "RATELIMIT_LIST is not a rate limit"),
    ({"WEBHOOK_ALLOWED_IPS": "15.237.103.194, not-an-ip"}, "WEBHOOK_ALLOWED_IPS holds 'not-an-ip'"),
    ({"WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET must be at least 16 characters"),
    ({"CORS_ORIGINS": "*"}, "CORS_ORIGINS must list origins explicitly"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
])
def test_invalid_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        settings(**env)


def test_environment_overrides_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("API_KEY=from-dotenv-0123456789\nMONGO_URI=mongodb://dotenv/\nMONGO_DB=fromfile\n")
    s = Settings.from_env({"MONGO_DB": "fromenv"}, dotenv_path=str(dotenv))
    assert s.api_keys == ("from-dotenv-0123456789",) and s.mongo_uri == "mongodb://dotenv/"
    assert s.mongo_db == "fromenv"


def test_start_without_api_key_fails_with_one_line(tmp_path):
    """gunicorn imports app.py; a missing key must stop it with a one-line message, exit 2."""
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "MONGO_URI": "mongodb://x/", "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "improvmx-webhook: configuration error: API_KEY is not set: set it to a long random token "
        "(comma-separate several to rotate)"]
