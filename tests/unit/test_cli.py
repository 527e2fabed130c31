"""Operator commands: check, create-indexes, send-sample, gc-blobs, spool status."""

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import mongomock
from pymongo.errors import ServerSelectionTimeoutError

from improvmx_archive.cli import EXIT_DATABASE_UNREACHABLE
from tests.payloads import message_with_attachment


def test_check_ok(app):
    result = app.test_cli_runner().invoke(args=["check"])
    assert result.exit_code == 0 and result.output.startswith("ok: configuration valid, MongoDB reachable")
    assert "test-key" not in result.output


def test_check_reports_unreachable_database(app, monkeypatch):
    def refuse(*args, **kwargs):
        raise ServerSelectionTimeoutError("no servers")

    monkeypatch.setattr(mongomock.database.Database, "command", refuse)
    result = app.test_cli_runner().invoke(args=["check"])
    assert result.exit_code == EXIT_DATABASE_UNREACHABLE
    assert "MongoDB is not reachable" in result.output


def test_create_indexes(app):
    result = app.test_cli_runner().invoke(args=["create-indexes"])
    assert result.exit_code == 0
    names = app.extensions["database"].emails.index_information()
    assert names["idempotency_key_unique"]["unique"] is True


def test_send_sample_posts_a_mailparse_payload():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"success": true}')

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    from improvmx_archive.cli import send_sample_command
    from click.testing import CliRunner
    result = CliRunner().invoke(send_sample_command, ["--url", f"http://127.0.0.1:{server.server_port}/webhook",
                                                      "--to", "me@archive.test"])
    server.server_close()
    assert result.exit_code == 0 and result.output.startswith("200 ")
    payload = received[0]
    assert payload["to"] == [{"name": None, "email": "me@archive.test"}]
    assert payload["inlines"][0]["cid"] and payload["attachments"][0]["name"] == "sample.pdf"


def test_gc_blobs_removes_only_old_unreferenced_blobs(app, client):
    archive = app.extensions["archive"]
    client.post("/webhook", json=message_with_attachment(b"kept" * 100_000))  # GridFS-sized
    orphan = archive.blobs.put(iter([b"orphan"]), "0" * 64, 6, "application/octet-stream")
    young = archive.blobs.put(iter([b"young"]), "1" * 64, 5, "application/octet-stream")
    files = app.extensions["database"]["blobs.files"]
    files.update_many({}, {"$set": {"uploadDate": datetime.now(timezone.utc) - timedelta(hours=2)}})
    files.update_one({"_id": young}, {"$set": {"uploadDate": datetime.now(timezone.utc)}})
    result = app.test_cli_runner().invoke(args=["gc-blobs"])
    assert result.output.strip() == "ok: removed 1 unreferenced blob(s) and 0 partial upload(s)"
    remaining = {f["_id"] for f in files.find()}
    assert orphan not in remaining and young in remaining and len(remaining) == 2


def test_spool_status_shows_where_mail_waits(app):
    app.extensions["spool"].put({"subject": "waiting"})
    result = app.test_cli_runner().invoke(args=["spool", "status"])
    assert result.exit_code == 0
    assert "waiting: 1 message(s)" in result.output
    assert str(app.extensions["spool"].directory.resolve()) in result.output


def test_gc_spares_a_blob_reused_after_it_was_judged_unreferenced(app, client):
    """The sweep found the blob unreferenced; an ingest reuses it before the delete lands."""
    archive = app.extensions["archive"]
    blob_id = archive.blobs.put(iter([b"logo"]), "2" * 64, 4, "image/png")
    files = app.extensions["database"]["blobs.files"]
    files.update_one({"_id": blob_id}, {"$set": {"uploadDate": datetime.now(timezone.utc) - timedelta(days=2)}})
    cutoff = datetime.now(timezone.utc) - timedelta(hours=1)
    assert archive.blobs.reuse("2" * 64, 4) == blob_id
    assert archive.blobs.delete_if_unused(blob_id, cutoff) is False
    assert files.find_one({"_id": blob_id}) is not None
