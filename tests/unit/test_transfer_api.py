"""GET /emails/<id>/raw, GET /export.mbox, POST /import and the export/import commands."""

from __future__ import annotations

import email
import mailbox
import re
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage

import pytest

from improvmx_archive.db import DatabaseUnavailable
from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.mailio import INCOMPLETE_EXPORT_HEADER, MARKER_SENDER, MessageSource, export_hint
from improvmx_archive.sample import payload_from_mime
from tests.conftest import API_KEY
from tests.payloads import FIXTURES, eml_payload, message_with_attachment
from tests.ui_helpers import sign_in

RAW = {"Content-Type": "message/rfc822"}


def _message(subject: str, *, sender: str = "sender@example.org", date: str | None = "Mon, 02 Mar 2020 09:00:00 +0000",
             received: str | None = None, text: str = "body") -> bytes:
    message = EmailMessage()
    if received:
        message["Received"] = received
    message["From"] = sender
    message["To"] = "inbox@archive.test"
    message["Subject"] = subject
    if date:
        message["Date"] = date
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.org>"
    message.set_content(text)
    return message.as_bytes()


def _ingest_at(archive, subject: str, moment: datetime, **kwargs) -> str:
    return archive.ingest(payload_from_mime(_message(subject, **kwargs)), received_at=moment).email_id


# --- GET /emails/<id>/raw ----------------------------------------------------------------------

def test_raw_downloads_the_rebuilt_message_as_eml(app, client, auth):
    email_id = app.extensions["archive"].ingest(eml_payload("attachments")).email_id
    response = client.get(f"/emails/{email_id}/raw", headers=auth)
    assert response.status_code == 200 and response.mimetype == "message/rfc822"
    assert response.headers["Content-Disposition"].startswith(f'attachment; filename="{email_id}.eml"')
    parsed = email.message_from_bytes(response.get_data(), policy=policy.default)
    assert parsed["Subject"] == eml_payload("attachments")["subject"]
    assert b"\r\n" in response.get_data() and b"\n" not in response.get_data().replace(b"\r\n", b"")


@pytest.mark.parametrize("email_id", ["0123456789abcdef01234567", "not-an-id"])
def test_raw_of_an_unknown_message_is_a_json_404(client, auth, email_id):
    response = client.get(f"/emails/{email_id}/raw", headers=auth)
    assert response.status_code == 404 and response.get_json() == {"success": False, "error": "Email not found"}


@pytest.mark.parametrize("path", ["/emails/0123456789abcdef01234567/raw", "/export.mbox"])
def test_export_routes_need_the_bearer_key(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong-key-wrong-key-1"}).status_code == 403


# --- GET /export.mbox --------------------------------------------------------------------------

def _mbox(tmp_path, data: bytes) -> mailbox.mbox:
    path = tmp_path / "export.mbox"
    path.write_bytes(data)
    return mailbox.mbox(path, create=False)


def test_export_mbox_streams_every_match_oldest_first(app, client, auth, tmp_path):
    archive = app.extensions["archive"]
    base = datetime(2021, 1, 1, tzinfo=timezone.utc)
    for day, subject in [(3, "third"), (1, "first"), (2, "second")]:
        _ingest_at(archive, subject, base + timedelta(days=day))
    same_moment = base + timedelta(days=5)
    for n in range(3):
        _ingest_at(archive, f"tie {n}", same_moment)
    response = client.get("/export.mbox", headers=auth)
    assert response.status_code == 200 and response.mimetype == "application/mbox"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="archive-')
    data = response.get_data()
    assert data.startswith(b"From sender@example.org Sat Jan  2 00:00:00 2021\n")
    assert b"\r" not in data
    box = _mbox(tmp_path, data)
    subjects = [message["Subject"] for message in box]
    assert subjects == ["first", "second", "third", "tie 0", "tie 1", "tie 2"]  # ties: by id


def test_export_mbox_applies_the_list_filters(app, client, auth, tmp_path):
    archive = app.extensions["archive"]
    moment = datetime(2022, 6, 1, tzinfo=timezone.utc)
    _ingest_at(archive, "from ann", moment, sender="ann@example.org")
    _ingest_at(archive, "from bob", moment + timedelta(hours=1), sender="bob@example.org")
    _ingest_at(archive, "later ann", moment + timedelta(days=30), sender="ann@example.org")
    response = client.get("/export.mbox?from_email=ann@example.org&until=2022-06-15T00:00:00Z", headers=auth)
    assert [m["Subject"] for m in _mbox(tmp_path, response.get_data())] == ["from ann"]
    assert client.get("/export.mbox?since=yesterday", headers=auth).status_code == 400


def test_export_mbox_takes_the_search_language(app, client, auth, tmp_path):
    archive = app.extensions["archive"]
    moment = datetime(2022, 6, 1, tzinfo=timezone.utc)
    _ingest_at(archive, "quarterly invoice", moment + timedelta(days=2), text="please pay the invoice")
    _ingest_at(archive, "holiday photos", moment + timedelta(days=1))
    _ingest_at(archive, "old invoice", moment, sender="ann@example.org", text="the invoice, again")
    SearchIndexer(archive).index_pending()
    response = client.get("/export.mbox?q=invoice", headers=auth)
    assert [m["Subject"] for m in _mbox(tmp_path, response.get_data())] == ["old invoice", "quarterly invoice"]
    response = client.get("/export.mbox?q=invoice%20from:ann@example.org", headers=auth)
    assert [m["Subject"] for m in _mbox(tmp_path, response.get_data())] == ["old invoice"]


def test_export_mbox_pages_through_more_than_one_batch(app, client, auth, tmp_path, monkeypatch):
    monkeypatch.setattr("improvmx_archive.mailio.EXPORT_BATCH", 3)
    archive = app.extensions["archive"]
    moment = datetime(2023, 3, 1, tzinfo=timezone.utc)
    for n in range(8):
        _ingest_at(archive, f"message {n}", moment + timedelta(minutes=n // 2))
    box = _mbox(tmp_path, client.get("/export.mbox", headers=auth).get_data())
    assert sorted(m["Subject"] for m in box) == [f"message {n}" for n in range(8)]
    assert len(box) == 8


def test_export_mbox_of_an_empty_selection_is_empty(client, auth):
    response = client.get("/export.mbox", headers=auth)
    assert response.status_code == 200 and response.get_data() == b""


def test_client_disconnect_stops_the_export(app, client, auth, monkeypatch):
    archive = app.extensions["archive"]
    moment = datetime(2023, 3, 1, tzinfo=timezone.utc)
    for n in range(5):
        archive.ingest(message_with_attachment(bytes([n]) * 3_000_000, subject=f"big {n}"),
                       received_at=moment + timedelta(minutes=n))
    reads = []
    original = archive.part_stream

    def counted(record):
        reads.append(original(record))
        return reads[-1]

    monkeypatch.setattr(archive, "part_stream", counted)
    response = client.get("/export.mbox", headers=auth)
    chunks = iter(response.response)
    received = b""
    while b"Content-Transfer-Encoding: base64" not in received:
        received += next(chunks)
    next(chunks)
    response.close()  # what the WSGI server does when the client goes away
    assert len(reads) == 1
    assert reads[0].chunks.gi_frame is None  # the part's cursor was closed, not left open
    with pytest.raises(StopIteration):
        next(chunks)


# --- POST /import ------------------------------------------------------------------------------

def test_import_stores_once_and_says_duplicate(app, client, auth):
    raw = (FIXTURES / "attachments.eml").read_bytes()
    first = client.post("/import", data=raw, headers={**auth, **RAW})
    assert first.status_code == 201
    body = first.get_json()
    assert body["success"] is True and body["duplicate"] is False
    again = client.post("/import", data=raw, headers={**auth, **RAW})
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert again.get_json()["email_id"] == body["email_id"]
    archive = app.extensions["archive"]
    assert archive.emails.count_documents({}) == 1
    stored = archive.find(body["email_id"])
    assert stored["source"] == "import" and stored["subject"] == eml_payload("attachments")["subject"]


def test_import_dates_the_message_by_its_top_received_header(app, client, auth):
    raw = _message("received", received="from mx.example by mx.archive.test; Tue, 05 May 2015 10:11:12 +0200",
                   date="Mon, 04 May 2015 00:00:00 +0000")
    body = client.post("/import", data=raw, headers={**auth, **RAW}).get_json()
    stored = app.extensions["archive"].emails.find_one({})
    assert stored["received_at"] == datetime(2015, 5, 5, 8, 11, 12, tzinfo=timezone.utc)
    assert body["received_at"] == "2015-05-05T08:11:12Z"


def test_import_falls_back_to_date_then_to_now(app, client, auth):
    archive = app.extensions["archive"]
    client.post("/import", data=_message("dated", date="Sun, 01 Jan 2012 12:00:00 -0500"), headers={**auth, **RAW})
    assert archive.emails.find_one({"subject": "dated"})["received_at"] == datetime(2012, 1, 1, 17, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    client.post("/import", data=_message("undated", date=None), headers={**auth, **RAW})
    client.post("/import", data=_message("bad date", date="the day after tomorrow"), headers={**auth, **RAW})
    client.post("/import", data=_message("future", date="Fri, 01 Jan 2100 00:00:00 +0000"), headers={**auth, **RAW})
    for subject in ("undated", "bad date", "future"):
        assert archive.emails.find_one({"subject": subject})["received_at"] >= before


@pytest.mark.parametrize("data", [b"", b"   \r\n", b'{"subject": "json, not mail"}', b"\x00\x01binary\xff" * 50,
                                  b"just some words\nwithout any header\n"])
def test_import_of_something_that_is_not_mail_is_a_400(client, auth, data):
    response = client.post("/import", data=data, headers={**auth, **RAW})
    assert response.status_code == 400 and response.get_json()["success"] is False
    assert "not an importable message" in response.get_json()["error"]


def test_import_needs_message_rfc822(client, auth):
    response = client.post("/import", data=_message("x"), headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 415 and "message/rfc822" in response.get_json()["error"]


def test_import_over_the_body_cap_is_a_413(make_app):
    client = make_app(MAX_BODY_MB="1", RATELIMIT_ENABLED="false").test_client()
    raw = _message("big", text="x" * (1024 * 1024 + 10))
    response = client.post("/import", data=raw, headers={"Authorization": f"Bearer {API_KEY}", **RAW})
    assert response.status_code == 413 and response.get_json()["error"] == "Request body too large"


def test_import_needs_the_bearer_key(client):
    assert client.post("/import", data=_message("x"), headers=RAW).status_code == 401


def test_import_has_its_own_rate_limit(make_app):
    client = make_app(RATELIMIT_IMPORT="2 per minute").test_client()
    headers = {"Authorization": f"Bearer {API_KEY}", **RAW}
    statuses = [client.post("/import", data=_message(f"limited {n}"), headers=headers).status_code for n in range(3)]
    assert statuses == [201, 201, 429]


# --- flask export / flask import ---------------------------------------------------------------

def _seed(archive, count=3):
    moment = datetime(2020, 1, 1, tzinfo=timezone.utc)
    return [_ingest_at(archive, f"seed {n}", moment + timedelta(days=n)) for n in range(count)]


def test_export_command_writes_an_mbox_and_rewrites_it_safely(app, tmp_path):
    _seed(app.extensions["archive"])
    output = tmp_path / "out" / "all.mbox"
    output.parent.mkdir()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["export", "--format", "mbox", str(output)])
    assert result.exit_code == 0, result.output
    assert "exported 3 message(s)" in result.output
    assert [m["Subject"] for m in mailbox.mbox(output, create=False)] == ["seed 0", "seed 1", "seed 2"]
    result = runner.invoke(args=["export", "--since", "2020-01-02T00:00:00Z", str(output)])
    assert "exported 2 message(s)" in result.output
    assert len(mailbox.mbox(output, create=False)) == 2
    assert sorted(p.name for p in output.parent.iterdir()) == ["all.mbox"]


def test_export_command_writes_eml_files_and_resumes(app, tmp_path):
    ids = _seed(app.extensions["archive"])
    runner = app.test_cli_runner()
    result = runner.invoke(args=["export", "--format", "eml", str(tmp_path / "eml")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "eml").iterdir())
    assert [f.name for f in files] == [f"2020010{n + 1}T000000Z-{ids[n]}.eml" for n in range(3)]
    files[0].unlink()
    result = runner.invoke(args=["export", "--format", "eml", str(tmp_path / "eml")])
    assert "exported 1 message(s)" in result.output and "skipped 2 already there" in result.output
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert parsed["Subject"] == "seed 0"


def test_export_command_takes_the_search_language(app, tmp_path):
    archive = app.extensions["archive"]
    _seed(archive)
    SearchIndexer(archive).index_pending()
    output = tmp_path / "q.mbox"
    result = app.test_cli_runner().invoke(args=["export", "--q", "subject:seed", "--until", "2020-01-02", str(output)])
    assert result.exit_code == 0, result.output
    assert [m["Subject"] for m in mailbox.mbox(output, create=False)] == ["seed 0", "seed 1"]


def test_export_command_refuses_a_bad_filter(app, tmp_path):
    result = app.test_cli_runner().invoke(args=["export", "--from-email", "nobody", str(tmp_path / "x.mbox")])
    assert result.exit_code == 2 and "'from_email' must be an email address" in result.output


def test_import_command_reads_files_directories_and_mboxes(app, tmp_path):
    runner = app.test_cli_runner()
    mbox_path = tmp_path / "old.mbox"
    box = mailbox.mbox(mbox_path)
    for n in range(3):
        box.add(_message(f"boxed {n}", text=f"From the mbox {n}\nline"))
    box.flush()
    box.close()
    tree = tmp_path / "tree" / "nested"
    tree.mkdir(parents=True)
    for name in ("attachments", "latin1"):
        (tree / f"{name}.eml").write_bytes((FIXTURES / f"{name}.eml").read_bytes())
    (tree / "broken.eml").write_bytes(b"this is not an email at all")
    (tree / ".hidden.eml").write_bytes(b"skipped")
    result = runner.invoke(args=["import", str(mbox_path), str(tmp_path / "tree"), str(tmp_path / "missing.eml")])
    assert result.exit_code == 1
    assert "stored 5, duplicate 0, failed 2" in result.output
    assert "broken.eml: not an RFC 5322 message" in result.output
    assert "missing.eml: no such file or directory" in result.output
    archive = app.extensions["archive"]
    assert archive.emails.count_documents({"source": "import"}) == 5
    assert archive.emails.find_one({"subject": "boxed 1"})["text"] == "From the mbox 1\nline"
    again = runner.invoke(args=["import", str(mbox_path), str(tree / "latin1.eml")])
    assert again.exit_code == 0 and "stored 0, duplicate 4, failed 0" in again.output


def test_import_command_reads_a_crlf_mboxrd_file(app, tmp_path):
    entries = []
    for number in range(2):
        raw = _message(f"crlf {number}", text=f"first\nFrom quoted {number}\n>From twice").replace(b"\n", b"\r\n")
        quoted = re.sub(rb"(?m)^(>*From )", rb">\1", raw)
        entries.append(b"From sender@example.org Mon Mar  2 09:00:00 2020\r\n" + quoted + b"\r\n")
    path = tmp_path / "windows.mbox"
    path.write_bytes(b"".join(entries))
    result = app.test_cli_runner().invoke(args=["import", str(path)])
    assert result.exit_code == 0 and "stored 2, duplicate 0, failed 0" in result.output, result.output
    stored = app.extensions["archive"].emails.find_one({"subject": "crlf 1"})
    assert stored["text"].replace("\r\n", "\n") == "first\nFrom quoted 1\n>From twice"


def test_docs_page_shows_the_transfer_routes_and_commands(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "/emails/EMAIL_ID/raw" in page and "Content-Type: message/rfc822" in page
    assert "flask --app app export --format mbox|eml" in page and "flask --app app import PATH..." in page


def test_import_answers_503_while_mongodb_is_down(app, client, auth, monkeypatch):
    def unavailable(*args, **kwargs):
        raise DatabaseUnavailable("ServerSelectionTimeoutError")

    monkeypatch.setattr(app.extensions["archive"], "ingest", unavailable)
    response = client.post("/import", data=_message("down"), headers={**auth, **RAW})
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert response.get_json() == {"success": False, "error": "Storage temporarily unavailable; retry later"}


def test_import_command_stops_with_exit_3_when_mongodb_goes_away(app, tmp_path, monkeypatch):
    for number in range(3):
        (tmp_path / f"{number}.eml").write_bytes(_message(f"outage {number}"))
    archive = app.extensions["archive"]
    real_ingest = archive.ingest
    calls = []

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DatabaseUnavailable("AutoReconnect")
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(archive, "ingest", failing_second)
    result = app.test_cli_runner().invoke(args=["import", str(tmp_path)])
    assert result.exit_code == 3 and "MongoDB is unavailable" in result.output and "stored 1 so far" in result.output
    assert len(calls) == 2


def _unrebuildable(monkeypatch, email_id: str) -> None:
    """Make one message fail to rebuild, as a bug met on hostile stored data would."""
    real_init = MessageSource.__init__

    def broken_for_one(self, archive, document):
        if str(document["_id"]) == email_id:
            raise ValueError("unrebuildable")
        real_init(self, archive, document)

    monkeypatch.setattr(MessageSource, "__init__", broken_for_one)


def _marker(message) -> list[str]:
    """The ids an export's closing marker names (each body line starts with one)."""
    assert message["From"] == MARKER_SENDER and message[INCOMPLETE_EXPORT_HEADER]
    body = message.get_payload(decode=True).decode()
    return [line.split()[0] for line in body.splitlines() if re.fullmatch(r"[0-9a-f]{24} .*", line)]


def test_export_command_reports_a_message_it_cannot_rebuild_and_exports_the_rest(app, tmp_path, monkeypatch):
    ids = _seed(app.extensions["archive"])
    _unrebuildable(monkeypatch, ids[1])
    output = tmp_path / "partial.mbox"
    result = app.test_cli_runner().invoke(args=["export", str(output)])
    assert result.exit_code == 1
    assert f"failed {ids[1]}: cannot be rebuilt (ValueError)" in result.output
    assert "exported 2 message(s)" in result.output and ", failed 1" in result.output
    assert "1 message(s) are not in the export" in result.output and "ends with a marker message" in result.output
    box = list(mailbox.mbox(output, create=False))
    assert [m["Subject"] for m in box[:2]] == ["seed 0", "seed 2"]
    assert _marker(box[2]) == [ids[1]] and box[2][INCOMPLETE_EXPORT_HEADER] == "1"


def test_eml_export_command_lists_a_message_it_cannot_rebuild_and_writes_the_rest(app, tmp_path, monkeypatch):
    ids = _seed(app.extensions["archive"])
    _unrebuildable(monkeypatch, ids[0])
    output = tmp_path / "eml"
    result = app.test_cli_runner().invoke(args=["export", "--format", "eml", str(output)])
    assert result.exit_code == 1 and f"failed {ids[0]}: cannot be rebuilt (ValueError)" in result.output
    assert "exported 2 message(s)" in result.output and ", failed 1" in result.output
    assert sorted(path.name.split("-")[1][:24] for path in output.iterdir()) == sorted(ids[1:])


def test_export_mbox_ends_with_a_marker_naming_a_message_it_cannot_rebuild(app, client, auth, tmp_path, monkeypatch,
                                                                           caplog):
    ids = _seed(app.extensions["archive"])
    _unrebuildable(monkeypatch, ids[0])
    response = client.get("/export.mbox", headers=auth)
    assert response.status_code == 200
    box = list(_mbox(tmp_path, response.get_data()))
    assert [m["Subject"] for m in box[:2]] == ["seed 1", "seed 2"]
    assert box[-1]["Subject"] == "Export incomplete: 1 message(s) are not in this file"
    assert _marker(box[-1]) == [ids[0]] and "cannot be rebuilt (ValueError)" in box[-1].get_payload()
    assert f"named in the closing marker email_id={ids[0]}" in caplog.text


def test_a_complete_export_has_no_marker_even_with_a_stored_marker_inside(app, client, auth, tmp_path):
    """Only an export's own marker carries the header: a stored one (an incomplete backup
    imported back, or a sender forging it) is exported without it."""
    archive = app.extensions["archive"]
    _seed(archive)
    archive.ingest({"from": {"email": "export@archive.invalid"}, "subject": "Export incomplete: 1 message(s)",
                    "headers": {INCOMPLETE_EXPORT_HEADER: "1"}, "text": "6b1642201fe6bab1244c601f cannot be rebuilt"})
    data = client.get("/export.mbox", headers=auth).get_data()
    assert INCOMPLETE_EXPORT_HEADER.encode() not in data and len(_mbox(tmp_path, data)) == 4


def test_a_message_whose_parts_fail_half_way_is_named_and_the_export_goes_on(app, client, auth, tmp_path,
                                                                              monkeypatch):
    archive = app.extensions["archive"]
    broken = archive.ingest(message_with_attachment(b"x" * 5000, subject="cut short")).email_id  # the newest
    _seed(archive, 2)
    real_stream = type(archive).part_stream

    def failing(self, record):
        stream = real_stream(self, record)
        first = next(iter(stream.chunks))

        def chunks():
            yield first[:100]
            raise OSError("chunk lost")
        stream.chunks = chunks()
        return stream

    monkeypatch.setattr(type(archive), "part_stream", failing)
    box = list(_mbox(tmp_path, client.get("/export.mbox", headers=auth).get_data()))
    assert _marker(box[-1]) == [broken]
    assert "incomplete, its parts could not be read (OSError)" in box[-1].get_payload()
    assert [m["Subject"] for m in box[:3]] == ["seed 0", "seed 1", "cut short"]  # its start, then the marker


def test_raw_of_a_message_that_cannot_be_rebuilt_is_a_clear_json_error(app, client, auth, monkeypatch):
    ids = _seed(app.extensions["archive"], 1)
    _unrebuildable(monkeypatch, ids[0])
    response = client.get(f"/emails/{ids[0]}/raw", headers=auth)
    assert response.status_code == 500 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False and "cannot be rebuilt (ValueError) as MIME" in body["error"]
    assert "unrebuildable" not in body["error"]  # the exception's text stays in the log


@pytest.mark.parametrize("query, index", [
    ({}, "newest_first"),
    ({"received_at": {"$gte": datetime(2020, 1, 1, tzinfo=timezone.utc)}}, "newest_first"),
    ({"from_email": "a@example.org", "processed": True}, "by_sender"),
    ({"recipients": "b@archive.test", "has_attachments": True}, "by_recipient"),
    ({"processed": False}, "by_processed"),
    ({"has_attachments": True}, "by_attachments"),
    ({"tokens": "invoice", "from_email": "a@example.org"}, "by_token"),
])
def test_export_pages_are_read_through_an_index_ending_in_the_sort_key(query, index):
    assert export_hint(query) == index


def test_an_export_imported_back_into_its_archive_stores_nothing(app, client, auth, tmp_path):
    ids = _seed(app.extensions["archive"])
    exported = tmp_path / "backup.mbox"
    exported.write_bytes(client.get("/export.mbox", headers=auth).get_data())
    result = app.test_cli_runner().invoke(args=["import", str(exported)])
    assert result.exit_code == 0 and "stored 0, duplicate 3, failed 0" in result.output, result.output
    raw = client.get(f"/emails/{ids[0]}/raw", headers=auth).get_data()
    answer = client.post("/import", data=raw, headers={**auth, **RAW}).get_json()
    assert answer["duplicate"] is True and answer["email_id"] == ids[0]
    assert app.extensions["archive"].emails.count_documents({}) == 3


def test_a_restore_into_an_empty_archive_keeps_the_ids(make_app, tmp_path):
    source = make_app(RATELIMIT_ENABLED="false")
    ids = _seed(source.extensions["archive"])
    exported = tmp_path / "backup.mbox"
    exported.write_bytes(source.test_client().get("/export.mbox", headers={"Authorization": f"Bearer {API_KEY}"}).get_data())
    target = make_app(RATELIMIT_ENABLED="false")
    assert target.test_cli_runner().invoke(args=["import", str(exported)]).exit_code == 0
    restored = {str(doc["_id"]): doc["subject"] for doc in target.extensions["archive"].emails.find({})}
    assert restored == {email_id: f"seed {n}" for n, email_id in enumerate(ids)}


@pytest.mark.parametrize("headers", [
    b"X-Archive-Reconstructed: yes\r\nX-Archive-Id: not-an-id\r\n",
    b"X-Archive-Id: 0123456789abcdef01234567\r\n",  # not a rebuilt message: the id is not trusted
])
def test_an_archive_id_is_only_taken_from_a_valid_rebuilt_message(app, client, auth, headers):
    body = client.post("/import", data=headers + _message("carried id"), headers={**auth, **RAW}).get_json()
    assert body["duplicate"] is False and body["email_id"] != "0123456789abcdef01234567"


def test_the_ui_says_plainly_when_a_message_cannot_be_rebuilt(app, client, monkeypatch):
    ids = _seed(app.extensions["archive"], 1)
    _unrebuildable(monkeypatch, ids[0])
    sign_in(client)
    for path in (f"/ui/emails/{ids[0]}?tab=source", f"/ui/emails/{ids[0]}/eml"):
        response = client.get(path)
        assert response.status_code == 500 and response.mimetype == "text/html", path
        assert "cannot be rebuilt (ValueError) as MIME" in response.get_data(as_text=True), path
    assert client.get(f"/ui/emails/{ids[0]}?tab=text").status_code == 200  # the rest of it still shows
