"""What a worker loads: storing mail must not import the code of the other features.

Each check runs in a fresh interpreter (this test process has imported everything already):
an app is built and serves webhooks, then the modules only other features need must still be
absent from sys.modules; the routes that need them must still work once asked for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Imported only by a request that needs them (or a `flask` command), never by storing mail.
NOT_FOR_STORING = (
    "requests",                      # notification delivery (notify.py's sender threads)
    "improvmx_archive.cli",          # `flask ...` commands
    "improvmx_archive.sample",       # mailparse, for `flask import` and send-sample
    "mailparse",
    "improvmx_archive.openapi",      # GET /docs, /openapi.json
    "improvmx_archive.sanitize",  # the web UI's message frame
    "nh3",
    "css_inline",
)

SCRIPT = r"""
import json, sys
from improvmx_archive import create_app  # first, as app.py does under gunicorn (before pymongo loads)
import mongomock
import mongomock.gridfs
from improvmx_archive.config import Settings
from improvmx_archive.sample import payload_from_mime, sample_mime

mongomock.gridfs.enable_gridfs_integration()
payload = json.dumps(payload_from_mime(sample_mime())).encode()
for name in [m for m in sys.modules if m == "mailparse" or m.startswith(("mailparse.", "improvmx_archive.sample"))]:
    del sys.modules[name]  # the sample was only needed to build the payload above
env = {"API_KEY": "test-key-0123456789abcdef", "MONGO_URI": "mongodb://127.0.0.1:1/",
       "RATELIMIT_STORAGE_URI": "memory://", "SPOOL_DIR": sys.argv[1], "TRUSTED_PROXY_COUNT": "0"}
app = create_app(Settings.from_env(env, dotenv_path=None), mongo_client=mongomock.MongoClient(tz_aware=True))
client = app.test_client()
out = {"webhook": [client.post("/webhook", data=payload, content_type="application/json").status_code
                   for _ in range(2)],
       "health": client.get("/healthz").status_code}
out["after_storing"] = sorted(m for m in sys.argv[2].split(",") if m in sys.modules)
step = sys.argv[3]
if step == "docs":
    out["docs"] = [client.get("/openapi.json").status_code, client.get("/docs").status_code]
elif step == "cli":
    result = app.test_cli_runner().invoke(args=["--help"])
    out["cli"] = [result.exit_code, "import" in result.output and "send-sample" in result.output]
elif step == "routes":
    stored = client.get("/emails?limit=1", headers={"Authorization": "Bearer test-key-0123456789abcdef"})
    email_id = stored.get_json()["emails"][0]["id"]
    statuses = {}
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        values = {name: email_id if name == "email_id" else 0 if name in ("position", "index") else "x"
                  for name in rule.arguments}
        path = app.url_map.bind("localhost").build(rule.endpoint, values)
        statuses[rule.rule] = client.get(path, headers={"Authorization": "Bearer test-key-0123456789abcdef"}).status_code
    out["routes"] = statuses
elif step == "ui":
    from improvmx_archive.ui.message import clean_html
    cleaned = clean_html('<p onclick="x()">hi<script>bad()</script></p>', lambda cid: None)
    out["ui"] = cleaned.html
out["after_step"] = sorted(m for m in sys.argv[2].split(",") if m in sys.modules)
print(json.dumps(out))
"""


def _run(tmp_path: Path, step: str) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "spool"), ",".join(NOT_FOR_STORING), step],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_storing_mail_loads_none_of_the_other_features(tmp_path):
    out = _run(tmp_path, "none")
    assert out["webhook"] == [200, 200] and out["health"] == 200
    assert out["after_storing"] == []


def test_the_docs_routes_load_the_spec_when_asked(tmp_path):
    out = _run(tmp_path, "docs")
    assert out["docs"] == [200, 200]
    assert "improvmx_archive.openapi" in out["after_step"]


def test_flask_commands_are_all_there_when_the_cli_is_used(tmp_path):
    out = _run(tmp_path, "cli")
    assert out["cli"] == [0, True]
    assert "improvmx_archive.cli" in out["after_step"]


def test_every_get_route_answers_without_a_server_error(tmp_path):
    """Lazy loading must not leave a route whose code was never imported: every GET route of
    the app, with the stored message's id where one is asked for, answers below 500."""
    out = _run(tmp_path, "routes")
    assert len(out["routes"]) >= 15  # API, transfer, docs, metrics and UI routes
    assert {rule: status for rule, status in out["routes"].items() if status >= 500} == {}


def test_the_ui_sanitiser_loads_with_the_first_message_shown(tmp_path):
    out = _run(tmp_path, "ui")
    assert "script" not in out["ui"] and "onclick" not in out["ui"] and "hi" in out["ui"]
    assert {"improvmx_archive.sanitize", "nh3"} <= set(out["after_step"])
