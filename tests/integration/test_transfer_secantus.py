"""The archive out and back in on a real MongoDB-protocol server (SecantusDB): 2,000 messages
exported as one mbox, read back by Python's mailbox and by mutt, imported into an empty
archive identically, and a second import storing nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import mailbox
import os
import pty
import re
import shutil
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from bson import ObjectId
from pymongo import MongoClient

from devtools import processes
from improvmx_archive import create_app
from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.mailio import INCOMPLETE_EXPORT_HEADER, unquote_mbox
from improvmx_archive.sample import PIXEL_PNG, payload_from_mime
from tests.conftest import API_KEY, make_settings

pytestmark = pytest.mark.slow

MESSAGES = 2000
START = datetime(2019, 3, 1, 8, 0, tzinfo=timezone.utc)


def _message(number: int) -> tuple[bytes, datetime]:
    """Varied real MIME: plain, alternative, `From ` lines, inline images and attachments."""
    moment = START + timedelta(minutes=37 * number)
    message = EmailMessage()
    message["From"] = f"Sender {number % 13} <sender{number % 13}@example.org>"
    message["To"] = "inbox@archive.test"
    if number % 7 == 0:
        message["Cc"] = "Copy <copy@archive.test>"
    message["Subject"] = f"Archive message {number:04d}"
    message["Date"] = format_datetime(moment)
    message["Message-ID"] = f"<m{number}@example.org>"
    text = f"Message {number}.\nFrom here on, a line an mbox must quote.\n>From this one too.\n"
    message.set_content(text)
    if number % 3 == 0:
        message.add_alternative(f"<p>Message <b>{number}</b></p><img src=\"cid:px{number}@x\">", subtype="html")
        message.get_payload()[1].add_related(PIXEL_PNG, "image", "png", cid=f"<px{number}@x>",
                                              filename="pixel.png", disposition="inline")
    if number % 10 == 0:
        message.add_attachment(hashlib.sha256(str(number).encode()).digest() * (40 + number),
                               maintype="application", subtype="octet-stream", filename=f"data-{number}.bin")
    return message.as_bytes(), moment


@pytest.fixture
def fresh_server_uri(tmp_path):
    """A SecantusDB server of this test's own: dropping 2,000 messages' database takes it
    minutes, so the whole server is thrown away instead of sharing the session's."""
    server = processes.secantus(tmp_path / "secantus").start()
    yield processes.mongo_uri(server.port)
    server.stop()


def _app(tmp_path, uri: str, database: str):
    client = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    settings = make_settings(tmp_path, MONGO_URI=uri, MONGO_DB=database, RATELIMIT_ENABLED="false")
    return create_app(settings, mongo_client=client), client


def _contents(archive) -> dict[str, tuple]:
    """Subject -> (date, received_at, text, html, cc, part digests) for every stored message."""
    found = {}
    for summary in archive.emails.find({}, {"_id": 1}):
        document = archive.find(str(summary["_id"]))
        records = list(document.get("attachments") or []) + list(document.get("inlines") or [])
        digests = []
        for record in records:
            stream = archive.part_stream(record)
            digests.append((record.get("name"), record.get("cid"),
                            hashlib.sha256(b"".join(stream.chunks)).hexdigest()))
        found[document["subject"]] = (document.get("date"), document["received_at"], document.get("text"),
                                      document.get("html"), document.get("cc"), digests)
    return found


def _mutt_subjects(path, work) -> tuple[int, list[str]]:
    """mutt reads the mbox in a pseudo-terminal: its status line's count, and the Subject of
    every message it pipes (each one, tagged, to a collecting script)."""
    mutt = shutil.which("mutt")
    assert mutt, "mutt is not installed (the CI installs it from Debian)"
    collected = work / "mutt-subjects.txt"
    script = work / "collect.sh"
    script.write_text(f"#!/bin/sh\ngrep -m1 '^Subject:' >> {collected}\n")
    script.chmod(0o755)
    command = [mutt, "-n", "-F", "/dev/null", "-R", "-f", str(path),
               "-e", "set pipe_split=yes wait_key=no auto_tag=yes sort=mailbox-order status_format='count=%m'",
               "-e", f'push "<tag-pattern>~A<enter><pipe-message>{script}<enter><quit>"']
    pid, fd = pty.fork()
    if pid == 0:  # the child: mutt, in the pseudo-terminal
        os.environ["TERM"] = "xterm"
        os.execv(command[0], command)
    screen = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen[-2000:]
    counts = re.findall(rb"count=(\d+)", screen)
    assert counts, screen[-2000:]
    subjects = [line.removeprefix("Subject: ") for line in collected.read_text().splitlines()]
    return int(counts[-1]), subjects


def test_2000_messages_out_as_mbox_and_back_into_an_empty_archive(fresh_server_uri, auth, tmp_path):
    source_app, source_client = _app(tmp_path, fresh_server_uri, "exported")
    target_app, target_client = _app(tmp_path, fresh_server_uri, "imported")
    try:
        _round_trip(source_app, target_app, auth, tmp_path)
    finally:
        source_client.close()
        target_client.close()


def _round_trip(source_app, target_app, auth, tmp_path):
    source = source_app.extensions["archive"]
    for number in range(MESSAGES):
        raw, moment = _message(number)
        source.ingest(payload_from_mime(raw), received_at=moment)

    response = source_app.test_client().get("/export.mbox", headers=auth)
    assert response.status_code == 200 and response.mimetype == "application/mbox"
    exported = tmp_path / "archive.mbox"
    with exported.open("wb") as handle:
        for chunk in response.response:
            handle.write(chunk)
    expected = [f"Archive message {n:04d}" for n in range(MESSAGES)]

    box = mailbox.mbox(exported, create=False)
    assert len(box) == MESSAGES
    assert [message["Subject"] for message in box] == expected  # oldest first
    assert box[0].get_from() == "sender0@example.org Fri Mar  1 08:00:00 2019"
    box.close()

    count, subjects = _mutt_subjects(exported, tmp_path)
    assert count == MESSAGES
    assert subjects == expected

    runner = target_app.test_cli_runner()
    first = runner.invoke(args=["import", str(exported)])
    assert first.exit_code == 0, first.output
    assert f"stored {MESSAGES}, duplicate 0, failed 0" in first.output
    target = target_app.extensions["archive"]
    assert _contents(target) == _contents(source)
    assert target.emails.count_documents({"source": "import"}) == MESSAGES

    again = runner.invoke(args=["import", str(exported)])
    assert again.exit_code == 0 and f"stored 0, duplicate {MESSAGES}, failed 0" in again.output
    assert target.emails.count_documents({}) == MESSAGES
    assert target.database["blobs.files"].count_documents({}) == source.database["blobs.files"].count_documents({})


def test_raw_download_of_a_large_message_on_a_real_server(secantus_app, auth):
    data = os.urandom(6 * 1024 * 1024)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.org", "b@archive.test", "Big"
    message.set_content("see attachment")
    message.add_attachment(data, maintype="application", subtype="zip", filename="big.zip")
    email_id = secantus_app.extensions["archive"].ingest(payload_from_mime(message.as_bytes())).email_id
    response = secantus_app.test_client().get(f"/emails/{email_id}/raw", headers=auth)
    again = payload_from_mime(response.get_data())
    assert base64.b64decode(again["attachments"][0]["content"]) == data


def test_filtered_export_pages_correctly_through_multikey_indexes(secantus_app, auth, tmp_path, monkeypatch):
    """Keyset pages (received_at range, ties by _id) over the recipient and token indexes,
    whose first field is an array: every match once, oldest first."""
    monkeypatch.setattr("improvmx_archive.mailio.EXPORT_BATCH", 3)
    archive = secantus_app.extensions["archive"]
    expected = []
    for number in range(14):
        message = EmailMessage()
        message["From"] = "sender@example.org"
        message["To"] = "sales@archive.test" if number % 2 else "other@archive.test"
        message["Subject"] = f"Quote {number:02d}" if number % 3 else f"Invoice {number:02d}"
        message.set_content(f"message {number}")
        moment = START + timedelta(hours=number // 3)  # ties of three
        archive.ingest(payload_from_mime(message.as_bytes()), received_at=moment)
        if number % 2:
            expected.append((moment, message["Subject"]))
    SearchIndexer(archive).index_pending()
    client = secantus_app.test_client()

    def subjects(query: str) -> list[str]:
        path = tmp_path / "filtered.mbox"
        path.write_bytes(client.get(f"/export.mbox?{query}", headers=auth).get_data())
        box = mailbox.mbox(path, create=False)
        try:
            return [message["Subject"] for message in box]
        finally:
            box.close()

    by_recipient = subjects("to=sales@archive.test")
    assert sorted(by_recipient) == sorted(subject for _, subject in expected)
    assert len(by_recipient) == len(expected) and [s for s in by_recipient if s.startswith("Invoice")]
    times = {subject: moment for moment, subject in expected}
    assert [times[subject] for subject in by_recipient] == sorted(times[subject] for subject in by_recipient)
    assert subjects("q=invoice") == [f"Invoice {n:02d}" for n in range(0, 14, 3)]


def test_an_export_over_gunicorn_names_what_it_could_not_rebuild_and_carries_international_mail(
        secantus_server, tmp_path):
    """Through a real gunicorn on SecantusDB: a stored document damaged outside the app (its
    attachments no longer records) is named by the mbox's closing marker and answered by
    /raw as a clear JSON error; internationalised and U+FFFD addresses travel in both."""
    uri = processes.mongo_uri(secantus_server.port)
    database = f"marker_{uuid.uuid4().hex[:12]}"
    client = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    archive = create_app(make_settings(tmp_path, MONGO_URI=uri, MONGO_DB=database, RATELIMIT_ENABLED="false"),
                         mongo_client=client).extensions["archive"]
    addresses = {"josé@exämple.com": None, "用户@例子.广告": None, "a\ufffdb@ex\ufffd.com": None}
    for number, address in enumerate(addresses):
        payload = {"from": {"name": "Ünïcode", "email": address}, "to": [{"name": None, "email": "用户@例子.广告"}],
                   "subject": f"intl {number}", "text": "body"}
        addresses[address] = archive.ingest(payload, received_at=START + timedelta(days=number)).email_id
    damaged = archive.ingest({"from": {"email": "a@example.org"}, "subject": "damaged", "text": "x"},
                             received_at=START + timedelta(days=10)).email_id
    archive.emails.update_one({"_id": ObjectId(damaged)}, {"$set": {"attachments": "not a list of records"}})
    env = {"API_KEY": API_KEY, "MONGO_URI": uri, "MONGO_DB": database, "RATELIMIT_ENABLED": "false",
           "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp_path / "spool"), "WEB_CONCURRENCY": "2"}
    server = processes.gunicorn(env, tmp_path / "gunicorn.log").start()
    base = f"http://127.0.0.1:{server.port}"
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    try:
        exported = tmp_path / "export.mbox"
        with urllib.request.urlopen(urllib.request.Request(f"{base}/export.mbox", headers=bearer), timeout=60) as reply:
            assert reply.status == 200
            exported.write_bytes(reply.read())
        box = mailbox.mbox(exported, create=False)
        messages = list(box)
        assert [m["Subject"] for m in messages[:3]] == ["intl 0", "intl 1", "intl 2"]
        for key, address in zip(box.keys()[:3], addresses):
            assert payload_from_mime(unquote_mbox(box.get_bytes(key)))["from"]["email"] == address
        marker = messages[-1]
        assert len(messages) == 4 and marker[INCOMPLETE_EXPORT_HEADER] == "1"
        assert f"{damaged} cannot be rebuilt (AttributeError)" in marker.get_payload()
        box.close()

        for address, email_id in addresses.items():
            with urllib.request.urlopen(urllib.request.Request(f"{base}/emails/{email_id}/raw", headers=bearer),
                                        timeout=30) as reply:
                assert payload_from_mime(reply.read())["from"]["email"] == address
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{base}/emails/{damaged}/raw", headers=bearer), timeout=30)
        assert refused.value.code == 500
        body = json.loads(refused.value.read())
        assert body["success"] is False and "cannot be rebuilt (AttributeError) as MIME" in body["error"]
        assert f"named in the closing marker email_id={damaged}" in server.log_text()
    finally:
        server.stop()
        client.drop_database(database)
        client.close()
