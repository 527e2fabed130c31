"""The IMAP view from outside: the real server process on loopback with a self-signed
certificate, over SecantusDB, read by real clients (imapclient, mbsync, mutt, curl)."""

from __future__ import annotations

import email
import os
import shutil
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.sample import payload_from_mime
from tests.conftest import API_KEY

pytestmark = pytest.mark.slow

DOMAIN = "archive.test"
DEADLINE = 30.0


def _mime(number: int, to: str, *, cc: str | None = None, attachment: bool = False) -> bytes:
    message = EmailMessage()
    message["From"] = f"Sender {number % 5} <sender{number % 5}@example.org>"
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = f"Report {number:03d} {'quarterly' if number % 3 == 0 else 'weekly'}"
    message["Date"] = format_datetime(datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(hours=number))
    message["Message-ID"] = f"<r{number}@example.org>"
    message.set_content(f"Body of report {number}.\n{'pineapple' if number % 4 == 0 else 'banana'} inside.\n")
    if number % 2 == 0:
        message.add_alternative(f"<p>Report <b>{number}</b></p>", subtype="html")
    if attachment:
        message.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="octet-stream",
                               filename=f"data-{number}.bin")
    return message.as_bytes()


def wait_until(condition, timeout: float = DEADLINE, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{message} not met within {timeout}s")


class Stack:
    """The web app (in process, for webhooks and the API) and the IMAP process, one database."""

    def __init__(self, tmp_path: Path, uri: str, database: str, app):
        self.tmp_path = tmp_path
        self.uri = uri
        self.database_name = database
        self.app = app
        self.client = app.test_client()
        self.mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
        self.database = self.mongo[database]
        self.cert, self.key = processes.self_signed_certificate(tmp_path / "tls")
        self.port = processes.free_port()
        self.server = None
        self.context = ssl.create_default_context(cafile=str(self.cert))

    def env(self) -> dict[str, str]:
        return {"API_KEY": API_KEY, "MONGO_URI": self.uri, "MONGO_DB": self.database_name,
                "RATELIMIT_STORAGE_URI": "memory://", "SPOOL_DIR": str(self.tmp_path / "spool"),
                "IMAP_TLS_CERT": str(self.cert), "IMAP_TLS_KEY": str(self.key),
                "IMAP_NUMBER_INTERVAL": "0.5", "IMAP_POLL_INTERVAL": "1", "DOMINIO": DOMAIN}

    def start(self):
        self.server = processes.imap_server(self.env(), self.tmp_path / "imap.log", self.port).start()
        return self

    def stop(self):
        if self.server:
            self.server.stop()

    def deliver(self, raw: bytes) -> str:
        response = self.client.post("/webhook", json=payload_from_mime(raw))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["id"] if "id" in (response.get_json() or {}) else None

    def index(self):
        SearchIndexer(self.app.extensions["archive"]).index_pending(lambda: False)

    def wait_numbered(self):
        wait_until(lambda: self.database.emails.count_documents({"imap_uid": None}) == 0, message="numbering")

    def imap(self, user: str = "operator", password: str = API_KEY) -> IMAPClient:
        connection = IMAPClient("localhost", port=self.port, ssl=True, ssl_context=self.context, timeout=30)
        connection.login(user, password)
        return connection

    def raw(self, email_id: str, key: str = API_KEY) -> bytes:
        response = self.client.get(f"/emails/{email_id}/raw", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        return response.get_data()


@pytest.fixture
def stack(tmp_path, secantus_uri, secantus_db_name, make_secantus_app):
    app = make_secantus_app(RATELIMIT_ENABLED="false", DOMINIO=DOMAIN)
    built = Stack(tmp_path, secantus_uri, secantus_db_name, app)
    yield built
    built.stop()
    if built.server and built.server.proc.returncode not in (None, 0, -15):
        print(built.server.log_text())


@pytest.fixture
def filled(stack):
    """Twelve messages to two aliases, numbered and indexed, and the server running."""
    for number in range(12):
        to = f"sales@{DOMAIN}" if number % 3 else f"support@{DOMAIN}"
        stack.deliver(_mime(number, to, cc=f"team@{DOMAIN}" if number == 5 else None, attachment=number % 4 == 1))
    stack.index()
    stack.start()
    stack.wait_numbered()
    return stack


def test_select_and_status_answer_every_field(filled):
    with filled.imap() as imap:
        folders = {name for _, _, name in imap.list_folders()}
        assert {"INBOX", f"sales@{DOMAIN}", f"support@{DOMAIN}", f"team@{DOMAIN}", "Sent"} <= folders
        status = imap.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"])
        assert status[b"MESSAGES"] == 12 and status[b"UNSEEN"] == 12
        selected = imap.select_folder("INBOX")
        assert selected[b"EXISTS"] == 12
        assert selected[b"UIDVALIDITY"] == status[b"UIDVALIDITY"]
        assert selected[b"UIDNEXT"] == status[b"UIDNEXT"]
        assert b"\\Seen" in selected[b"PERMANENTFLAGS"]
        assert selected[b"RECENT"] == 0
        assert imap.select_folder(f"support@{DOMAIN}", readonly=True)[b"EXISTS"] == 4
