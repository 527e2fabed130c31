"""The IMAP view from outside: the real server process on loopback with a self-signed
certificate, over SecantusDB, read by real clients (imapclient, mbsync, mutt, curl)."""

from __future__ import annotations

import email
import imaplib
import os
import pty
import select
import signal
import socket
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
from tests.polling import wait_until

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
        self.env_overrides: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {"API_KEY": API_KEY, "MONGO_URI": self.uri, "MONGO_DB": self.database_name,
                "RATELIMIT_STORAGE_URI": "memory://", "SPOOL_DIR": str(self.tmp_path / "spool"),
                "IMAP_TLS_CERT": str(self.cert), "IMAP_TLS_KEY": str(self.key),
                "IMAP_NUMBER_INTERVAL": "0.5", "IMAP_POLL_INTERVAL": "1", "DOMINIO": DOMAIN,
                "LOG_LEVEL": "DEBUG", **self.env_overrides}

    def start(self):
        self.server = processes.imap_server(self.env(), self.tmp_path / "imap.log", self.port).start()
        return self

    def stop(self):
        if self.server:
            self.server.stop()

    def deliver(self, raw: bytes) -> str:
        response = self.client.post("/webhook", json=payload_from_mime(raw))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["email_id"]

    def index(self):
        SearchIndexer(self.app.extensions["archive"]).index_pending(lambda: False)

    def wait_numbered(self):
        """Every message numbered and its UID published (visible_through)."""
        def published():
            if self.database.emails.count_documents({"imap_uid": None}):
                return False
            top = self.database.emails.find_one({}, {"imap_uid": 1}, sort=[("imap_uid", -1)])
            state = self.database.imap_state.find_one({"_id": "numbering"}) or {}
            return top is None or state.get("visible_through", 0) >= top["imap_uid"]
        wait_until(published, "numbering", DEADLINE)

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


def _ids_by_uid(stack) -> dict[int, str]:
    return {document["imap_uid"]: str(document["_id"])
            for document in stack.database.emails.find({}, {"imap_uid": 1})}


def test_uids_are_stable_across_reconnects_and_a_restart_and_new_mail_goes_above(filled):
    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        first = imap.fetch(imap.search("ALL"), ["UID", "RFC822.SIZE"])
        validity = imap.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    uids = sorted(first)
    assert uids == sorted(set(uids)) and len(uids) == 12
    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        assert sorted(imap.search("ALL")) == uids
    filled.server.stop()
    # An import with an old date arrives while the server is down: it still numbers above.
    old = _mime(99, f"sales@{DOMAIN}").replace(b"Subject:", b"Received: from x by y; Mon, 1 Jan 2001 00:00:00 +0000\r\nSubject:", 1)
    response = filled.client.post("/import", data=old, headers={"Authorization": f"Bearer {API_KEY}",
                                                                 "Content-Type": "message/rfc822"})
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    filled.start()
    filled.wait_numbered()
    with filled.imap() as imap:
        selected = imap.select_folder("INBOX", readonly=True)
        assert selected[b"UIDVALIDITY"] == validity
        now = sorted(imap.search("ALL"))
        assert now[:12] == uids and len(now) == 13 and now[12] > uids[-1]
        assert selected[b"UIDNEXT"] > now[-1]


def test_body_equals_raw_download_and_size_and_partial_fetches(filled):
    by_uid = _ids_by_uid(filled)
    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        fetched = imap.fetch(imap.search("ALL"), ["RFC822.SIZE", "BODY.PEEK[]", "INTERNALDATE", "FLAGS"])
        for uid, data in fetched.items():
            raw = filled.raw(by_uid[uid])
            assert data[b"BODY[]"] == raw
            assert data[b"RFC822.SIZE"] == len(raw)
            assert data[b"FLAGS"] == ()
        again = imap.fetch(imap.search("ALL"), ["BODY.PEEK[]"])
        assert {uid: data[b"BODY[]"] for uid, data in again.items()} == \
            {uid: data[b"BODY[]"] for uid, data in fetched.items()}
        uid = sorted(fetched)[1]
        whole = fetched[uid][b"BODY[]"]
        partial = imap.fetch([uid], ["BODY.PEEK[]<10.50>"])[uid]
        assert partial[b"BODY[]<10>"] == whole[10:60]
        header = imap.fetch([uid], ["BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]"])[uid]
        value = next(v for k, v in header.items() if k.startswith(b"BODY[HEADER.FIELDS"))
        assert value.startswith((b"From:", b"Subject:")) and value.endswith(b"\r\n\r\n")
        parsed = email.message_from_bytes(whole)
        structure = imap.fetch([uid], ["BODYSTRUCTURE", "ENVELOPE"])[uid]
        assert structure[b"ENVELOPE"].subject.decode() == parsed["Subject"]
        assert structure[b"BODYSTRUCTURE"].is_multipart == parsed.is_multipart()
        if parsed.is_multipart():
            first = imap.fetch([uid], ["BODY.PEEK[1]"])[uid][b"BODY[1]"]
            assert first in whole


def test_search_finds_what_the_api_search_finds(filled):
    by_uid = _ids_by_uid(filled)
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def api(q: str) -> set[str]:
        response = filled.client.get("/emails", query_string={"q": q, "limit": 100}, headers=auth)
        return {email["id"] for email in response.get_json()["emails"]}

    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        cases = [(["SUBJECT", "quarterly"], "subject:quarterly"), (["BODY", "pineapple"], "body:pineapple"),
                 (["TEXT", "banana"], "banana"), (["FROM", "sender2@example.org"], 'from:"sender2@example.org"'),
                 (["TO", f"support@{DOMAIN}"], f'to:"support@{DOMAIN}"'), (["CC", f"team@{DOMAIN}"], f'cc:"team@{DOMAIN}"'),
                 (["NOT", "SUBJECT", "quarterly"], "-subject:quarterly")]
        for keys, q in cases:
            found = {by_uid[uid] for uid in imap.search(keys)}
            assert found == api(q) and found, (keys, q)
        either = {by_uid[uid] for uid in imap.search(["OR", "BODY", "pineapple", "SUBJECT", "quarterly"])}
        assert either == api("body:pineapple") | api("subject:quarterly")
        assert len(imap.search(["SINCE", "1-Jan-2000"])) == 12
        assert imap.search(["BEFORE", "1-Jan-2000"]) == []
        uids = sorted(imap.search("ALL"))
        assert sorted(imap.search(["UID", f"{uids[2]}:{uids[4]}"])) == uids[2:5]
        sizes = imap.fetch(imap.search("ALL"), ["RFC822.SIZE"])
        median = sorted(data[b"RFC822.SIZE"] for data in sizes.values())[6]
        assert sorted(imap.search(["LARGER", str(median)])) == sorted(
            uid for uid, data in sizes.items() if data[b"RFC822.SIZE"] > median)
        assert sorted(imap.search(["SMALLER", str(median)])) == sorted(
            uid for uid, data in sizes.items() if data[b"RFC822.SIZE"] < median)
    # Non-ASCII terms travel as literals (CHARSET UTF-8); accents fold as in the API's q.
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "chef@example.org", f"sales@{DOMAIN}", "Crème brûlée"
    message.set_content("Une recette de crème brûlée.")
    special = filled.deliver(message.as_bytes())
    filled.index()
    filled.wait_numbered()
    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        by_uid = _ids_by_uid(filled)
        assert {by_uid[uid] for uid in imap.search(["SUBJECT", "brûlée"], charset="UTF-8")} == {special} == \
            api("subject:brûlée")
        assert {by_uid[uid] for uid in imap.search(["TEXT", "crème"], charset="UTF-8")} == api("crème")


def _raw(imap: IMAPClient, command: str, *args: str):
    """A command imapclient lacks (MOVE without the capability), raising on NO like it does."""
    imaplib.Commands.setdefault("MOVE", ("SELECTED",))
    kind, data = imap._imap._simple_command(command, *args)
    if kind != "OK":
        raise IMAPClientError(b" ".join(d for d in data if isinstance(d, bytes)).decode())
    return data


def test_seen_is_per_person_and_the_only_change_a_client_makes(filled):
    people, keys = filled.app.extensions["people"], filled.app.extensions["keys"]
    tokens = {}
    for name in ("ann", "bob"):
        person = people.add(name, f"{name}@people.test", role="admin")
        tokens[name], _ = keys.create(str(person["_id"]), "mail", ["imap"])
    with filled.imap(f"ann@people.test", tokens["ann"]) as ann:
        ann.select_folder("INBOX")
        uids = sorted(ann.search("ALL"))
        ann.fetch(uids[:2], ["BODY[]"])  # not PEEK: marks \\Seen
        ann.add_flags(uids[2:3], [b"\\Seen"])
        assert sorted(ann.search("SEEN")) == uids[:3]
        assert len(ann.search("UNSEEN")) == 9
        assert ann.folder_status("INBOX", ["UNSEEN"])[b"UNSEEN"] == 9
        ann.remove_flags(uids[2:3], [b"\\Seen"])
        assert sorted(ann.search("SEEN")) == uids[:2]
        for write in (lambda: ann.add_flags(uids[:1], [b"\\Flagged"]), lambda: ann.delete_messages(uids[:1]),
                      lambda: ann.expunge(), lambda: ann.copy(uids[:1], "Sent"),
                      lambda: _raw(ann, "UID", "MOVE", str(uids[0]), "Sent"), lambda: _raw(ann, "MOVE", "1", "Sent"),
                      lambda: ann.append("INBOX", b"Subject: x\r\n\r\nbody\r\n"),
                      lambda: ann.create_folder("New"), lambda: ann.delete_folder(f"sales@{DOMAIN}"),
                      lambda: ann.rename_folder(f"sales@{DOMAIN}", "Old")):
            with pytest.raises(IMAPClientError) as refused:
                write()
            assert "read-only" in str(refused.value).lower(), refused.value
            ann.noop()  # the connection stays usable
        assert len(ann.search("ALL")) == 12
    with filled.imap("bob@people.test", tokens["bob"]) as bob:
        bob.select_folder("INBOX")
        assert bob.search("SEEN") == []
    assert filled.database.emails.count_documents({}) == 12


def test_idle_and_noop_see_a_new_webhook_delivery(filled):
    with filled.imap() as imap:
        imap.select_folder(f"sales@{DOMAIN}", readonly=True)
        before = len(imap.search("ALL"))
        imap.idle()
        filled.deliver(_mime(50, f"sales@{DOMAIN}"))
        responses = imap.idle_check(timeout=DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while not any(r[1] == b"EXISTS" for r in responses if len(r) > 1) and time.monotonic() < deadline:
            responses = imap.idle_check(timeout=DEADLINE)
        imap.idle_done()
        assert (before + 1, b"EXISTS") in responses
        filled.deliver(_mime(51, f"sales@{DOMAIN}"))
        wait_until(lambda: (imap.noop()[1] and False) or len(imap.search("ALL")) == before + 2, "NOOP", DEADLINE)


def test_access_matrix_over_imap(filled):
    people, keys = filled.app.extensions["people"], filled.app.extensions["keys"]
    member = people.add("mia", "mia@people.test")
    people.grant("mia", [f"support@{DOMAIN}"])
    token, record = keys.create(str(member["_id"]), "phone", ["imap"])
    read_only, _ = keys.create(str(member["_id"]), "api", ["read"])
    support = {str(d["_id"]) for d in filled.database.emails.find({"audience": f"support@{DOMAIN}"}, {"_id": 1})}
    by_uid = _ids_by_uid(filled)
    with filled.imap("mia@people.test", token) as imap:
        folders = {name for _, _, name in imap.list_folders()}
        assert f"sales@{DOMAIN}" not in folders and f"support@{DOMAIN}" in folders
        for folder in folders:
            imap.select_folder(folder, readonly=True)
            seen = {by_uid[uid] for uid in imap.search("ALL")}
            assert seen <= support, folder
        imap.select_folder("INBOX", readonly=True)
        assert {by_uid[uid] for uid in imap.search("ALL")} == support
        assert imap.fetch([max(by_uid)], ["BODY.PEEK[]"]) == {} or max(by_uid) in {
            uid for uid in by_uid if by_uid[uid] in support}
        with pytest.raises(IMAPClientError):
            imap.select_folder(f"sales@{DOMAIN}")
    with pytest.raises(LoginError):
        filled.imap("mia@people.test", read_only)
    with pytest.raises(LoginError):
        filled.imap("someone@people.test", token)
    keys.revoke(record["_id"])
    with pytest.raises(LoginError):
        filled.imap("mia@people.test", token)


def mbsync_config(stack, maildir: Path, user: str = "operator", password: str = API_KEY) -> Path:
    config = stack.tmp_path / "mbsyncrc"
    config.write_text(f"""IMAPAccount archive
Host localhost
Port {stack.port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {stack.cert}
PipelineDepth 50

IMAPStore archive-far
Account archive

MaildirStore archive-near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel archive
Far :archive-far:
Near :archive-near:
Patterns *
Create Near
Sync Pull
SyncState *
""")
    return config


def run_mbsync(config: Path) -> str:
    done = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def maildir_messages(folder: Path) -> list[bytes]:
    """Each message's bytes as mbsync stored them, less its own X-TUID bookkeeping header."""
    found = []
    for path in sorted([*folder.glob("cur/*"), *folder.glob("new/*")]):
        data = path.read_bytes()
        found.append(b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"X-TUID: ")))
    return found


def test_mbsync_pulls_every_mailbox_identical_to_the_api_and_a_second_run_moves_nothing(filled):
    maildir = filled.tmp_path / "Mail"
    maildir.mkdir()
    config = mbsync_config(filled, maildir)
    run_mbsync(config)
    by_uid = _ids_by_uid(filled)
    with filled.imap() as imap:
        for _, _, folder in imap.list_folders():
            imap.select_folder(folder, readonly=True)
            expected = sorted(filled.raw(by_uid[uid]).replace(b"\r\n", b"\n") for uid in imap.search("ALL"))
            assert sorted(maildir_messages(maildir / folder)) == expected, folder
    before = {path: path.stat().st_mtime_ns for path in maildir.rglob("*") if path.is_file()
              and ".mbsyncstate" not in path.name and ".uidvalidity" not in path.name}
    second = run_mbsync(config)
    after = {path: path.stat().st_mtime_ns for path in maildir.rglob("*") if path.is_file()
             and ".mbsyncstate" not in path.name and ".uidvalidity" not in path.name}
    assert after == before, second


def test_mutt_reads_a_mailbox_in_batch_mode(filled):
    """mutt opens an alias mailbox over IMAPS in a pseudo-terminal, pipes every message to a
    collecting script and quits; its input is all pushed up front, so nothing races."""
    collected = filled.tmp_path / "mutt-subjects.txt"
    script = filled.tmp_path / "collect.sh"
    script.write_text(f"#!/bin/sh\ngrep -m1 '^Subject:' >> {collected}\n")
    script.chmod(0o755)
    trusted = filled.tmp_path / "mutt-certs"
    shutil.copy(filled.cert, trusted)
    command = [shutil.which("mutt"), "-n", "-F", "/dev/null", "-R",
               "-f", f"imaps://operator@localhost:{filled.port}/support@{DOMAIN}",
               "-e", f"set imap_pass='{API_KEY}' certificate_file='{trusted}' ssl_verify_host=no "
                     f"folder='{filled.tmp_path}' imap_delim_chars=/ header_cache='' message_cachedir='' pipe_split=yes wait_key=no auto_tag=yes "
                     "sort=mailbox-order status_format='count=%m'",
               "-e", f'push "<tag-pattern>~A<enter><pipe-message>{script}<enter><quit>"']
    pid, fd = pty.fork()
    if pid == 0:  # the child: mutt, in the pseudo-terminal
        os.environ["TERM"] = "xterm"
        os.environ["HOME"] = str(filled.tmp_path)
        os.execv(command[0], command)
    screen, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(fd)
    os.waitpid(pid, 0)
    text = screen.decode(errors="replace")
    assert "count=4" in text, text[-2000:]
    subjects = sorted(line.split(":", 1)[1].strip() for line in collected.read_text().splitlines())
    assert subjects == sorted(f"Report {n:03d} {'quarterly' if n % 3 == 0 else 'weekly'}" for n in range(0, 12, 3)), \
        text[-3000:]


def test_curl_lists_the_mailboxes(filled):
    done = subprocess.run(["curl", "--silent", "--show-error", "--cacert", str(filled.cert),
                           "--user", f"operator:{API_KEY}", f"imaps://localhost:{filled.port}/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "INBOX" in done.stdout and f"sales@{DOMAIN}" in done.stdout and "\\Sent" in done.stdout


def test_a_mongodb_outage_answers_no_and_the_server_recovers(tmp_path):
    """The database goes away under a selected mailbox: commands answer NO [UNAVAILABLE] on a
    connection that stays usable, a login answers NO, and everything works once it is back."""
    data = tmp_path / "own-secantus"
    database = processes.secantus(data).start()
    uri = processes.mongo_uri(database.port)
    try:
        from improvmx_archive import create_app
        from tests.conftest import make_settings

        mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
        app = create_app(make_settings(tmp_path, MONGO_URI=uri, MONGO_DB="outage", RATELIMIT_ENABLED="false",
                                       DOMINIO=DOMAIN), mongo_client=mongo)
        stack = Stack(tmp_path, uri, "outage", app)
        stack.env_overrides = {"MONGO_TIMEOUT_MS": "800"}
        for number in range(3):
            stack.deliver(_mime(number, f"sales@{DOMAIN}"))
        stack.start()
        stack.wait_numbered()
        with stack.imap() as imap:
            imap.select_folder("INBOX", readonly=True)
            uids = imap.search("ALL")
            database.stop()
            with pytest.raises(IMAPClientError) as refused:
                imap.fetch(uids, ["BODY.PEEK[]"])
            assert "UNAVAILABLE" in str(refused.value)
            with pytest.raises(IMAPClientError):
                imap.search(["SUBJECT", "report"])
            imap.noop()  # still connected
            with pytest.raises(LoginError):
                stack.imap()
            database.start()
            wait_until(lambda: _fetch_works(imap, uids), "recovery", DEADLINE)
        with stack.imap() as again:
            again.select_folder("INBOX", readonly=True)
            assert sorted(again.search("ALL")) == sorted(uids)
        stack.stop()
    finally:
        database.stop()


def _fetch_works(imap: IMAPClient, uids) -> bool:
    try:
        return len(imap.fetch(uids, ["BODY.PEEK[]"])) == len(uids)
    except IMAPClientError:
        return False


def test_starttls_port_a_certificate_reload_on_sighup_and_metrics(stack):
    """Before STARTTLS nothing signs in; after it LOGIN works. SIGHUP makes new connections
    see a renewed certificate without a restart. The process's /metrics counts it all."""
    import hashlib
    import urllib.request

    starttls_port, metrics_port = processes.free_port(), processes.free_port()
    stack.env_overrides = {"IMAP_STARTTLS_PORT": str(starttls_port), "IMAP_METRICS_PORT": str(metrics_port)}
    stack.deliver(_mime(1, f"sales@{DOMAIN}"))
    stack.start()
    stack.wait_numbered()
    processes.wait_for_port(starttls_port)

    plain = imaplib.IMAP4("localhost", starttls_port)
    assert "LOGINDISABLED" in plain.capabilities and "STARTTLS" in plain.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        plain.login("operator", API_KEY)
    plain.starttls(ssl_context=stack.context)
    assert plain.login("operator", API_KEY)[0] == "OK"
    assert plain.select("INBOX", readonly=True) == ("OK", [b"1"])
    plain.logout()

    def presented(trusted: Path) -> str:
        context = ssl.create_default_context(cafile=str(trusted))
        with socket.create_connection(("localhost", stack.port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    first = presented(stack.cert)
    fresh_cert, fresh_key = processes.self_signed_certificate(stack.tmp_path / "renewed")
    stack.cert.write_bytes(fresh_cert.read_bytes())
    stack.key.write_bytes(fresh_key.read_bytes())
    stack.server.signal(signal.SIGHUP)
    second = wait_until(lambda: _try(lambda: presented(fresh_cert)), "the renewed certificate", DEADLINE)
    assert second != first

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'imap_logins_total{result="ok"}' in metrics
    assert 'imap_commands_total{command="EXAMINE"}' in metrics and "imap_connections_open" in metrics


def _try(function):
    try:
        return function()
    except (OSError, ssl.SSLError):
        return None


def test_two_servers_on_one_database_number_once_and_agree_on_every_uid(stack):
    stack.start()
    second = processes.imap_server(stack.env(), stack.tmp_path / "imap-2.log").start()
    try:
        for number in range(20):  # arriving while both servers run their numbering passes
            stack.deliver(_mime(number, f"sales@{DOMAIN}"))
        stack.index()
        stack.wait_numbered()
        uids = [d["imap_uid"] for d in stack.database.emails.find({}, {"imap_uid": 1})]
        assert len(uids) == 20 and len(set(uids)) == 20
        views = []
        for port in (stack.port, second.port):
            with IMAPClient("localhost", port=port, ssl=True, ssl_context=stack.context, timeout=30) as imap:
                imap.login("operator", API_KEY)
                imap.select_folder(f"sales@{DOMAIN}", readonly=True)
                fetched = imap.fetch(imap.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                views.append({uid: next(iter(v for k, v in data.items() if k.startswith(b"BODY")))
                              for uid, data in fetched.items()})
                assert set(imap.list_sub_folders(pattern="*")) == set(imap.list_folders(pattern="*"))
        assert views[0] == views[1] and len(views[0]) == 20
    finally:
        second.stop()


def test_a_message_deleted_through_the_api_is_expunged_on_noop(filled):
    by_uid = _ids_by_uid(filled)
    with filled.imap() as imap:
        imap.select_folder("INBOX", readonly=True)
        uids = sorted(imap.search("ALL"))
        victim = uids[3]
        response = filled.client.delete(f"/emails/{by_uid[victim]}", headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200, response.get_data(as_text=True)
        _, untagged = imap.noop()
        assert (4, b"EXPUNGE") in untagged and (11, b"EXISTS") in untagged
        assert sorted(imap.search("ALL")) == [uid for uid in uids if uid != victim]


def test_a_fetch_spanning_several_runs_is_whole_and_in_order_and_a_client_leaving_midway_harms_nothing(stack):
    """Runs are built one ahead of the one being written: every message arrives once, in
    order, equal to /raw; a client that drops the connection mid-FETCH leaves the server
    serving others, with no unhandled error."""
    ids = []
    for number in range(6):
        message = EmailMessage()
        message["From"] = "big@example.org"
        message["To"] = f"sales@{DOMAIN}"
        message["Subject"] = f"Large {number}"
        message["Message-ID"] = f"<large{number}@example.org>"
        message.set_content("See the attachment.\n")
        message.add_attachment(os.urandom(1_500_000), maintype="application", subtype="octet-stream",
                               filename=f"large-{number}.bin")
        ids.append(stack.deliver(message.as_bytes()))
    stack.start()
    stack.wait_numbered()
    with stack.imap() as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        assert sorted(fetched) == sorted(uids) and len(uids) == 6
        assert sorted(fetched[uid][b"BODY[]"] for uid in uids) == sorted(stack.raw(email_id) for email_id in ids)

    with socket.create_connection(("localhost", stack.port), timeout=30) as plain:
        with stack.context.wrap_socket(plain, server_hostname="localhost") as tls:
            tls.recv(4096)
            tls.sendall(f"a LOGIN operator {API_KEY}\r\nb SELECT INBOX\r\nc UID FETCH 1:* BODY.PEEK[]\r\n".encode())
            received = b""
            while len(received) < 200_000:
                received += tls.recv(65536)
    assert b"BODY[]" in received

    with stack.imap() as client:
        client.select_folder("INBOX", readonly=True)
        again = client.fetch(client.search("ALL"), ["RFC822.SIZE"])
        assert len(again) == 6
    time.sleep(1)
    assert "Unhandled error" not in stack.server.log_text()
