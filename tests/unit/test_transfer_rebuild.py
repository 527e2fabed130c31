"""Rebuilding stored messages as MIME: the round trip through mailparse, header order and
hygiene, hostile stored values, mboxrd quoting, and streaming of large parts."""

from __future__ import annotations

import base64
import email
import hashlib
import os
import re
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from improvmx_archive.sample import payload_from_mime
from improvmx_archive.mailio import (
    NEVER_COPIED, RECONSTRUCTED_HEADER, UNREPRESENTABLE_HEADER, MessageSource, _base64_lines, header_lines, mbox_entry,
    unquote_mbox,
)
from tests.payloads import FIXTURES, eml_payload, message_with_attachment

CORPUS = sorted(FIXTURES.glob("*.eml")) + sorted((FIXTURES / "cpython").glob("msg_*.txt"))


def _normalised(text):
    """Line endings are the rebuild's (CRLF in .eml): compare text with LF endings."""
    return None if text is None else text.replace("\r\n", "\n").replace("\r", "\n")


def _parts(archive, email_id):
    document = archive.find(email_id)
    records = list(document.get("attachments") or []) + list(document.get("inlines") or [])
    out = []
    for position, record in enumerate(records):
        _, blob = archive.part(email_id, position=position)
        data = b"".join(blob.chunks)
        out.append((position >= len(document.get("attachments") or []), record.get("type"), record.get("name"),
                    record.get("cid"), hashlib.sha256(data).hexdigest(), len(data)))
    return out


def _rebuilt(archive, email_id, linesep=b"\r\n"):
    return b"".join(MessageSource(archive, archive.find(email_id)).chunks(linesep))


def _assert_same_message(original, again):
    for field in ("subject", "from", "to", "cc", "date", "sender", "return-path"):
        assert again.get(field) == original.get(field), field
    for name, value in original["headers"].items():  # values as received, order aside
        if name.lower() not in NEVER_COPIED:
            assert again["headers"].get(name) == value, name
    if original.get("message-id"):
        assert again["message-id"].strip("<>") == original["message-id"].strip("<>")
    for body in ("text", "html"):
        assert _normalised(again.get(body)) == _normalised(original.get(body)), body


@pytest.fixture
def archives(make_app):
    """Two independent archives: the original one and the one the rebuilt mail goes into."""
    return make_app().extensions["archive"], make_app().extensions["archive"]


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
@pytest.mark.parametrize("form", ["eml", "mbox"])
def test_corpus_round_trips_through_mailparse(archives, path: Path, form: str):
    source, target = archives
    original = payload_from_mime(path.read_bytes())
    email_id = source.ingest(original).email_id
    if form == "eml":
        raw = _rebuilt(source, email_id)
    else:
        entry = b"".join(mbox_entry(source, source.find(email_id)))
        assert entry.startswith(b"From ") and entry.endswith(b"\n\n") and b"\r" not in entry.split(b"\n", 1)[0]
        raw = unquote_mbox(entry.split(b"\n", 1)[1][:-1])
    again = payload_from_mime(raw)
    _assert_same_message(original, again)
    again_id = target.ingest(again).email_id
    assert _parts(target, again_id) == _parts(source, email_id)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed[RECONSTRUCTED_HEADER]


def _stored(archive, payload):
    return archive.find(archive.ingest(payload).email_id)


def test_header_order_is_trace_then_originator_then_the_rest(app):
    message = EmailMessage()
    message["X-Spam-Score"] = "1.2"
    message["Subject"] = "Order"
    message["To"] = "to@archive.test"
    message["Received"] = "from b.example by mx.archive.test; Tue, 10 Nov 2026 10:00:02 +0000"
    message["From"] = "Ann <ann@example.org>"
    message["Received"] = "from a.example by b.example; Tue, 10 Nov 2026 10:00:01 +0000"
    message["Return-Path"] = "<bounce@example.org>"
    message["Date"] = "Tue, 10 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<order@example.org>"
    message["Reply-To"] = "Replies <replies@example.org>"
    message.set_content("body")
    document = _stored(app.extensions["archive"], payload_from_mime(message.as_bytes()))
    names = [name for name, _ in header_lines(document)]
    assert names[:3] == ["Return-Path", "Received", "Received"]
    assert names[3:9] == ["Date", "From", "Reply-To", "To", "Message-ID", "Subject"]
    assert set(names[9:]) == {"X-Spam-Score"}
    received = [value for name, value in header_lines(document) if name == "Received"]
    assert received[0].startswith("from b.example")  # the top one stays on top


def test_mime_framing_and_bcc_are_never_copied_from_stored_headers(app):
    payload = payload_from_mime((FIXTURES / "attachments.eml").read_bytes())
    payload["headers"].update({"Content-Type": "text/evil", "Content-Transfer-Encoding": "x-evil",
                               "MIME-Version": "9.9", "Content-Disposition": "evil", "Content-ID": "<evil>",
                               "Content-Length": "1", "Bcc": "hidden@example.org",
                               RECONSTRUCTED_HEADER: "forged", "X-Archive-Id": "forged"})
    payload["bcc"] = [{"name": None, "email": "secret@example.org"}]
    archive = app.extensions["archive"]
    email_id = archive.ingest(payload).email_id
    raw = _rebuilt(archive, email_id)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed.get_all("X-Archive-Id") == [email_id]
    assert parsed["Bcc"] is None and b"secret@example.org" not in raw and b"hidden@" not in raw
    assert parsed["MIME-Version"] == "1.0" and parsed.get_content_type() == "multipart/mixed"
    assert parsed.get_all(RECONSTRUCTED_HEADER) and len(parsed.get_all(RECONSTRUCTED_HEADER)) == 1
    for forged in (b"text/evil", b"x-evil", b"9.9", b"<evil>", b"Disposition: evil", b"forged"):
        assert forged not in raw
    assert parsed["Content-Length"] is None


def test_mime_structure_is_mixed_related_alternative(app):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.org", "b@archive.test", "Structure"
    message.set_content("plain")
    message.add_alternative('<p>html <img src="cid:logo@x"></p>', subtype="html")
    message.get_payload()[1].add_related(b"\x89PNG fake", "image", "png", cid="<logo@x>", filename="logo.png",
                                          disposition="inline")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="doc.pdf")
    archive = app.extensions["archive"]
    parsed = email.message_from_bytes(_rebuilt(archive, archive.ingest(payload_from_mime(message.as_bytes())).email_id),
                                      policy=policy.default)
    assert [part.get_content_type() for part in parsed.walk()] == [
        "multipart/mixed", "multipart/related", "multipart/alternative", "text/plain", "text/html",
        "image/png", "application/pdf"]
    related = parsed.get_payload()[0]
    assert related.get_param("type") == "multipart/alternative"
    assert related.get_payload()[1]["Content-ID"] == "<logo@x>"
    assert parsed.get_payload()[1].get_filename() == "doc.pdf"
    assert all(not part.defects for part in parsed.walk())


HOSTILE = {
    "subject": "Hello\r\nBcc: victim@example.org\r\n\r\n--injected",
    "from": {"name": "Eve\r\nX-Injected: yes", "email": "eve@example.org>\r\nBcc: x@example.org"},
    "to": [{"name": 'Quote " and \\ backslash', "email": "to@archive.test"}],
    "date": "Tue, 10 Nov 2026 10:00:00 +0000\r\nX-Injected: date",
    "message-id": "<id@example.org>\nX-Injected: mid",
    "return-path": {"name": None, "email": "bounce@example.org>\r\nX-Injected: rp"},
    "headers": {
        "X-Evil\r\nBcc": "name injection",
        "X-Colon: Bcc": "colon in name",
        "Bad Name": "space in name",
        "X-Ünicode": "non-ASCII name",
        "X-Value": "line one\r\nBcc: value-injection@example.org",
        "X-Nested": {"a": [1, 2]},
        "X-Number": 7,
        "X-Null": None,
    },
    "text": "text\r\n--=_archive_guess\r\nContent-Type: text/html\r\n\r\n<script>",
    "html": None,
    "attachments": [{
        "type": "application/pdf\r\nX-Injected: type", "name": 'evil"\r\n\r\n--boundary\r\nname.pdf',
        "content": "JVBERi0=", "encoding": "base64",
    }],
    "inlines": [{"type": "image/png", "name": "a.png", "cid": "cid@x>\r\nX-Injected: cid", "content": "iVBORw==",
                 "encoding": "base64"}],
}


def test_hostile_stored_values_cannot_inject_headers_or_parts(app):
    archive = app.extensions["archive"]
    raw = _rebuilt(archive, archive.ingest(HOSTILE).email_id)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None and "X-Injected" not in parsed
    for part in parsed.walk():
        assert not part.defects, part.defects
        assert "X-Injected" not in part and part["Bcc"] is None
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed", "multipart/related", "text/plain", "image/png", "application/octet-stream"]
    assert parsed["Subject"] == "Hello Bcc: victim@example.org --injected"
    assert [a.addr_spec for a in parsed["From"].addresses] == ["eve@example.org"]
    assert parsed["To"].addresses[0].display_name == 'Quote " and \\ backslash'
    assert parsed["Return-Path"] == "<bounce@example.org>"
    assert parsed["X-Value"] == "line one Bcc: value-injection@example.org"
    invalid = parsed.get_all(UNREPRESENTABLE_HEADER)
    assert sorted(invalid) == sorted(["X-Evil Bcc: name injection", "X-Colon: Bcc: colon in name",
                                      "Bad Name: space in name", "X-Ünicode: non-ASCII name"])
    assert parsed["X-Nested"] == '{"a": [1, 2]}' and parsed["X-Number"] == "7" and "X-Null" not in parsed
    attachment = parsed.get_payload()[1]
    assert attachment.get_filename() == 'evil" --boundary name.pdf'
    assert attachment.get_content() == b"%PDF-"
    inline = parsed.get_payload()[0].get_payload()[1]
    assert inline["Content-ID"] == "<cid@xX-Injectedcid>"
    assert raw.isascii()


def test_single_fields_stay_single_whatever_shape_they_were_stored_in(app):
    archive = app.extensions["archive"]
    raw = _rebuilt(archive, archive.ingest({
        "subject": ["first subject", "second subject"], "date": ["Tue, 10 Nov 2026 10:00:00 +0000", "later"],
        "from": [{"name": "A", "email": "a@example.org"}], "to": "x@archive.test, y@archive.test",
        "message-id": ["<one@x>", "<two@x>"], "text": "body"}).email_id)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    for name in ("Subject", "Date", "From", "Message-ID"):
        assert len(parsed.get_all(name)) == 1, name
    assert parsed["Subject"] == "first subject" and parsed["Message-ID"] == "<one@x>"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["x@archive.test", "y@archive.test"]


def test_an_address_list_is_one_header(app):
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = "One <one@archive.test>, two@archive.test, \"Three, Esq.\" <three@archive.test>"
    message["Cc"] = "four@archive.test, five@archive.test"
    message["Reply-To"] = "r1@example.org, r2@example.org"
    message["Delivered-To"] = "one@archive.test"
    message.set_content("body")
    archive = app.extensions["archive"]
    original = payload_from_mime(message.as_bytes())
    # mailparse keeps only the first Reply-To address of a list; a stored list is one header too
    original["headers"]["Reply-To"] = [{"name": None, "email": "r1@example.org"}, {"name": "R2", "email": "r2@example.org"}]
    parsed = email.message_from_bytes(_rebuilt(archive, archive.ingest(original).email_id), policy=policy.default)
    for name, count in (("To", 3), ("Cc", 2), ("Reply-To", 2)):
        assert len(parsed.get_all(name)) == 1 and len(parsed[name].addresses) == count, name
    assert parsed["To"].addresses[2].display_name == "Three, Esq."


def test_unicode_names_subjects_and_filenames_are_encoded(app):
    message = EmailMessage()
    message["From"] = "Jürgen Müller <juergen@beispiel.example>"
    message["To"] = "Zoë <zoe@archive.test>, plain@archive.test"
    message["Subject"] = "Grüße – ein sehr langer Betreff, der über die Zeilenlänge hinaus geht 🚀"
    message.set_content("Grüße")
    message.add_attachment("Straße".encode(), maintype="text", subtype="plain", filename="Rechnung März 2026.txt")
    archive = app.extensions["archive"]
    original = payload_from_mime(message.as_bytes())
    raw = _rebuilt(archive, archive.ingest(original).email_id)
    assert raw.isascii()
    again = payload_from_mime(raw)
    _assert_same_message(original, again)
    assert again["attachments"][0]["name"] == "Rechnung März 2026.txt"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_mboxrd_quoting_is_reversible(app):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.org", "b@archive.test", "From lines"
    text = "From the start\n>From quoted once\n>>From quoted twice\nnot From here\nFrom\tnot a separator"
    message.set_content(text)
    archive = app.extensions["archive"]
    document = _stored(archive, payload_from_mime(message.as_bytes()))
    entry = b"".join(mbox_entry(archive, document))
    body_lines = entry.split(b"\n")[1:]
    assert b">From the start" in body_lines and b">>From quoted once" in body_lines
    assert b">>>From quoted twice" in body_lines and not any(line.startswith(b"From ") for line in body_lines)
    assert payload_from_mime(unquote_mbox(entry.split(b"\n", 1)[1]))["text"] == text


def test_mbox_separator_uses_sender_and_received_at_in_utc(app):
    archive = app.extensions["archive"]
    payload = payload_from_mime((FIXTURES / "alternative.eml").read_bytes())
    moment = datetime(2024, 2, 9, 7, 5, 3, tzinfo=timezone.utc)
    document = archive.find(archive.ingest(payload, received_at=moment).email_id)
    separator = next(iter(mbox_entry(archive, document)))
    assert separator == f"From {document['from_email']} Fri Feb  9 07:05:03 2024\n".encode()


def test_large_attachment_is_streamed_in_bounded_chunks(app):
    data = os.urandom(5 * 1024 * 1024 + 17)
    archive = app.extensions["archive"]
    email_id = archive.ingest(message_with_attachment(data)).email_id
    chunks = list(MessageSource(archive, archive.find(email_id)).chunks())
    assert max(len(chunk) for chunk in chunks) < 2 * 1024 * 1024
    parsed = email.message_from_bytes(b"".join(chunks), policy=policy.default)
    assert parsed.get_payload()[1].get_content() == data
    assert all(len(line) <= 78 for line in re.split(rb"\r\n", b"".join(chunks)))


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 57 * 512 - 1, 57 * 512, 57 * 512 + 1, 57 * 1536 + 40])
@pytest.mark.parametrize("chunk_size", [7, 1000, 57 * 512, 261_120])
def test_base64_lines_are_rfc2045_lines_whatever_the_chunking(size, chunk_size):
    """Lines are cut in blocks: every size around a line and a block boundary, any chunking."""
    data = os.urandom(size)
    chunks = [data[i:i + chunk_size] for i in range(0, size, chunk_size)]
    assert b"".join(_base64_lines(chunks, b"\r\n")) == base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert b"".join(_base64_lines(chunks, b"\n")) == base64.encodebytes(data)


def test_missing_part_content_still_gives_a_parseable_message(app, monkeypatch):
    archive = app.extensions["archive"]
    email_id = archive.ingest(message_with_attachment(b"gone soon")).email_id
    monkeypatch.setattr(archive, "part_stream", lambda record: None)
    parsed = email.message_from_bytes(_rebuilt(archive, email_id), policy=policy.default)
    assert [p.get_content_type() for p in parsed.walk()] == ["multipart/mixed", "text/plain",
                                                              "application/octet-stream"]
    assert parsed.get_payload()[1].get_content() == b""


def test_message_without_bodies_or_parts_is_an_empty_text_message(app):
    archive = app.extensions["archive"]
    raw = _rebuilt(archive, archive.ingest({"subject": "Nothing", "from": {"email": "a@example.org"}}).email_id)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Nothing" and parsed.get_content_type() == "text/plain"


def test_a_rebuild_is_the_same_bytes_every_time(app, client, auth):
    """IMAP clients compare BODY[] with RFC822.SIZE and fetch again later: every container's
    boundary is fixed per message, so two downloads are byte-identical."""
    stored = client.post("/webhook", json=eml_payload("attachments")).get_json()["email_id"]
    first = client.get(f"/emails/{stored}/raw", headers=auth).get_data()
    second = client.get(f"/emails/{stored}/raw", headers=auth).get_data()
    assert first == second and b"=_archive_" in first


@pytest.mark.parametrize("content_type", ["message/external-body", "message/global", "message/partial",
                                          "message/disposition-notification"])
@pytest.mark.parametrize("content", ["Reporting-UA: mx.example\r\nFinal-Recipient: rfc822; a@example.org",
                                     "Content-Type: text/plain\n\nbody after headers",
                                     "ENCODING mime\r\nFILE /a/b.txt\nmixed endings", ""])
def test_message_parts_mailparse_reads_only_the_body_of_come_back_byte_for_byte(archives, content_type, content):
    """mailparse stores only the body of these parts, parsing its first lines as headers:
    the rebuild frames the stored bytes as an entity of their own, in base64, so neither
    header-shaped lines nor the file's line endings change them. (mailparse strips what it
    stores, so stored content never ends in whitespace.)"""
    source, target = archives
    email_id = source.ingest({"from": {"email": "a@example.org"}, "subject": "parts", "text": "see part",
                              "attachments": [{"type": content_type, "content": content}]}).email_id
    stored = _parts(source, email_id)
    assert stored[0][4] == hashlib.sha256(content.encode()).hexdigest()
    for raw in (_rebuilt(source, email_id), unquote_mbox(b"".join(mbox_entry(source, source.find(email_id)))
                                                        .split(b"\n", 1)[1][:-1])):
        again = payload_from_mime(raw)
        assert again["attachments"][0]["type"] == content_type
        assert _parts(target, target.ingest(again).email_id) == stored
        parsed = email.message_from_bytes(raw, policy=policy.default)
        part = parsed.get_payload()[1]
        assert part["Content-Transfer-Encoding"] == "7bit" and not any(p.defects for p in parsed.walk())
        assert part.get_payload()[0].get_content() == content
