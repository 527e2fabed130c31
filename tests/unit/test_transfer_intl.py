"""Internationalised (RFC 6531) and damaged (U+FFFD) addresses out of the archive and back:
rebuilt as RFC 6532 UTF-8 headers, read back to the same addresses by the archive's
mailparse reading and by Python's email package, in .eml and mbox, for every address header
of every message in the corpus."""

from __future__ import annotations

import email
import mailbox
import random
import re
from email import policy
from email.utils import getaddresses
from pathlib import Path

import pytest
from mailparse import EmailDecode

from improvmx_archive.mailio import MessageSource, Rebuild, mbox_entry, unquote_mbox
from improvmx_archive.sample import payload_from_mime
from tests.payloads import FIXTURES

CORPUS = sorted(FIXTURES.glob("*.eml")) + sorted((FIXTURES / "cpython").glob("msg_*.txt"))

INTERNATIONAL = ["josé@exämple.com", "用户@例子.广告", "ученик@пример.рф", "δοκιμή@παράδειγμα.δοκιμή",
                 "ann@straße.de", "mañana@españa.es", "a\ufffdb@ex\ufffd.com", "\ufffd\ufffd@\ufffd.org",
                 "plain@example.org"]
NAMES = [None, "José Ñúñez", "用户", "Smith, John", "R\ufffdsum\ufffd", "Plain Name"]
# (where mailparse stores the header, its key, one address or a list)
ADDRESS_FIELDS = [(None, "from", True), (None, "sender", True), (None, "return-path", True), (None, "to", False),
                  (None, "cc", False), ("headers", "Reply-To", False), ("headers", "Delivered-To", True)]


def _rebuilt(archive, email_id, linesep=b"\r\n") -> bytes:
    return b"".join(MessageSource(archive, archive.find(email_id)).chunks(linesep))


def _mbox_message(archive, email_id) -> bytes:
    entry = b"".join(mbox_entry(archive, archive.find(email_id)))
    return unquote_mbox(entry.split(b"\n", 1)[1][:-1])


def _field(payload, section, key):
    return (payload.get(section) or {}).get(key) if section else payload.get(key)


def _addresses(payload) -> dict[str, object]:
    return {key: _field(payload, section, key) for section, key, _ in ADDRESS_FIELDS}


def _mutated(payload: dict, rng: random.Random) -> dict:
    """The payload with every address header holding internationalised or U+FFFD addresses."""
    payload = {**payload, "headers": dict(payload.get("headers") or {})}

    def address(single_name_free=False):
        return {"name": None if single_name_free else rng.choice(NAMES), "email": rng.choice(INTERNATIONAL)}

    for section, key, single in ADDRESS_FIELDS:
        target = payload["headers"] if section else payload
        if single:
            target[key] = address(single_name_free=key == "return-path")
        else:
            target[key] = [address() for _ in range(rng.randint(1, 4))]
    return payload


def _python_reads(raw: bytes) -> dict[str, list[str]]:
    """What Python's email package reads from the rebuilt message as RFC 6532 text."""
    parsed = email.message_from_string(raw.decode("utf-8"), policy=policy.default)
    read = {name.lower(): [address.addr_spec for header in parsed.get_all(name) or [] for address in header.addresses]
            for name in ("From", "Sender", "To", "Cc", "Reply-To")}
    read["delivered-to"] = [address for _, address in getaddresses(parsed.get_all("Delivered-To") or [])]
    return read


def _emails(value) -> list[str]:
    return [item["email"] for item in (value if isinstance(value, list) else [value] if value else [])]


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_every_address_header_of_every_corpus_message_round_trips_internationalised(app, path: Path):
    archive = app.extensions["archive"]
    rng = random.Random(path.name)
    for _ in range(3):
        mutated = _mutated(payload_from_mime(path.read_bytes()), rng)
        email_id = archive.ingest(mutated).email_id
        for raw in (_rebuilt(archive, email_id), _mbox_message(archive, email_id)):
            assert _addresses(payload_from_mime(raw)) == _addresses(mutated)
            read = _python_reads(raw)
            for section, key, _ in ADDRESS_FIELDS:
                if key != "return-path":
                    assert read[key.lower()] == _emails(_field(mutated, section, key)), key
            assert re.search(rb"^Return-Path: <(.+)>\r?$", raw, re.M).group(1).decode() == mutated["return-path"]["email"]


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_raw_utf8_and_damaged_address_bytes_import_store_and_round_trip(app, path: Path):
    """Mutate the real message's bytes: its address headers as RFC 6532 UTF-8, some with bytes
    that are not UTF-8 (they become U+FFFD), as an import of damaged mail would meet them."""
    rng = random.Random(f"bytes:{path.name}")
    raw = path.read_bytes()
    split = re.search(rb"\r?\n\r?\n", raw)  # a message of headers alone has none
    head, separator, body = (raw[:split.start()], split.group(0), raw[split.end():]) if split else (raw, b"\n\n", b"")
    newline = b"\r\n" if separator.startswith(b"\r\n") else b"\n"
    lines = [line for line in re.split(rb"\r?\n(?![ \t])", head)
             if not re.match(rb"(?i)(from|to|cc|sender|reply-to|delivered-to|return-path):", line)]
    damaged = [b"d\xffamaged@ex\xfe.com", b"caf\xe9@ex\xe4mple.com", "用户@例子.广告".encode() + b"\xff"]
    added = []
    for name in (b"From", b"Sender", b"To", b"Cc", b"Reply-To", b"Delivered-To"):
        picks = [rng.choice(INTERNATIONAL).encode() if rng.random() < 0.6 else rng.choice(damaged)
                 for _ in range(1 if name in (b"From", b"Sender", b"Delivered-To") else rng.randint(1, 3))]
        added.append(name + b": " + b", ".join(picks))
    added.append(b"Return-Path: <" + rng.choice(damaged) + b">")
    mutated_raw = newline.join(added + lines) + separator + body

    archive = app.extensions["archive"]
    imported = payload_from_mime(mutated_raw)
    assert "\ufffd" in repr(_addresses(imported))  # the damaged bytes are in, as U+FFFD
    for section, key, single in ADDRESS_FIELDS:
        assert _field(imported, section, key), key  # none dropped, unlike mailparse alone
    email_id = archive.ingest(imported).email_id
    for again in (_rebuilt(archive, email_id), _mbox_message(archive, email_id)):
        assert _addresses(payload_from_mime(again)) == _addresses(imported)


def test_a_utf8_address_is_written_raw_and_folded_only_between_addresses(app):
    archive = app.extensions["archive"]
    recipients = [{"name": f"Empfänger {n}", "email": f"empfänger{n}@beispiel.de"} for n in range(8)]
    email_id = archive.ingest({"from": {"name": "José", "email": "josé@exämple.com"}, "to": recipients,
                               "subject": "Grüße", "text": "body"}).email_id
    raw = _rebuilt(archive, email_id)
    header = raw.split(b"\r\n\r\n", 1)[0]
    assert "From: =?utf-8?b?Sm9zw6k=?= <josé@exämple.com>\r\n".encode() in header
    assert b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=" in header or b"=?utf-8?b?" in header  # the Subject stays RFC 2047
    to_lines = re.search(rb"^To: .*?\r\n(?! )", header, re.M | re.S).group(0).split(b"\r\n")[:-1]
    assert len(to_lines) > 1 and all(len(line) <= 998 for line in to_lines)
    assert all(line.rstrip(b",").endswith(b">") for line in to_lines)  # never inside an address
    assert _addresses(payload_from_mime(raw))["to"] == recipients


def test_mailparse_alone_cannot_read_an_internationalised_address(app):
    """Why payload_from_mime reads RFC 6532 address headers itself: from bytes mailparse
    drops From and To and turns Reply-To into U+FFFD; given the text, it raises."""
    archive = app.extensions["archive"]
    email_id = archive.ingest({"from": {"name": None, "email": "josé@exämple.com"},
                               "to": [{"name": None, "email": "用户@例子.广告"}],
                               "headers": {"Reply-To": [{"name": None, "email": "josé@exämple.com"}]},
                               "text": "body"}).email_id
    raw = _rebuilt(archive, email_id)
    alone = dict(EmailDecode.load(raw))
    assert alone.get("from") is None and alone.get("to") is None
    assert alone["headers"]["Reply-To"][0]["email"] == "jos\ufffd\ufffd@ex\ufffd\ufffdmple.com"  # one per byte
    with pytest.raises(UnicodeEncodeError):
        EmailDecode.load(raw.decode("utf-8"))
    again = payload_from_mime(raw)
    assert again["from"]["email"] == "josé@exämple.com" and again["to"][0]["email"] == "用户@例子.广告"
    assert again["headers"]["Reply-To"][0]["email"] == "josé@exämple.com"


def test_a_domain_is_not_rewritten_to_idna(app):
    """IDNA 2003 (Python's codec) maps straße.de to strasse.de, another domain; a grant or a
    search names the address as stored."""
    archive = app.extensions["archive"]
    email_id = archive.ingest({"from": {"name": None, "email": "ann@straße.de"}, "text": "body"}).email_id
    raw = _rebuilt(archive, email_id)
    assert "ann@straße.de".encode() in raw and b"xn--" not in raw and b"strasse" not in raw


def test_lone_surrogates_in_a_stored_document_become_u_fffd():
    """Ingest replaces lone surrogates (BSON cannot hold them), but text read back from GridFS
    is decoded with surrogatepass: whatever reaches the rebuild, UTF-8 cannot carry them."""
    document = {"_id": "x", "subject": "half \udc00 a pair", "from": {"name": "Bad \ud800", "email": "a\ud800@x.org"},
                "headers": {"X-Note": "lone \ud800"}, "text": "text \ud800 body", "html": "<p>html \udc00</p>"}
    raw = b"".join(Rebuild(document).skeleton("\r\n"))
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "half \ufffd a pair" and parsed["X-Note"] == "lone \ufffd"
    assert parsed.get_body(("plain",)).get_content().rstrip() == "text \ufffd body"
    assert parsed.get_body(("html",)).get_content().rstrip() == "<p>html \ufffd</p>"
    assert payload_from_mime(raw)["from"] == {"name": "Bad \ufffd", "email": "a\ufffd@x.org"}


@pytest.mark.parametrize("address", ["josé@exämple.com", "a\ufffdb@ex\ufffd.com"])
def test_raw_and_export_answer_internationalised_messages(app, client, auth, tmp_path, address):
    archive = app.extensions["archive"]
    email_id = archive.ingest({"from": {"name": None, "email": address}, "subject": "intl",
                               "to": [{"name": None, "email": "用户@例子.广告"}], "text": "body"}).email_id
    response = client.get(f"/emails/{email_id}/raw", headers=auth)
    assert response.status_code == 200
    assert payload_from_mime(response.get_data())["from"]["email"] == address
    path = tmp_path / "export.mbox"
    path.write_bytes(client.get("/export.mbox", headers=auth).get_data())
    box = mailbox.mbox(path, create=False)
    assert len(box) == 1 and box[0]["Subject"] == "intl"
    assert box[0].get_from().startswith("MAILER-DAEMON ")  # the separator line stays ASCII
    assert payload_from_mime(unquote_mbox(box.get_bytes(box.keys()[0])))["from"]["email"] == address


def test_a_backup_of_international_mail_restores_the_same_addresses(make_app, tmp_path):
    """Export as mbox, import into an empty archive with flask import: same ids, same addresses
    (and so the same audience tags and the same grants matching them)."""
    source = make_app(RATELIMIT_ENABLED="false")
    archive = source.extensions["archive"]
    rng = random.Random("backup")
    originals = {}
    for path in CORPUS[:12]:
        mutated = _mutated(payload_from_mime(path.read_bytes()), rng)
        originals[archive.ingest(mutated).email_id] = _addresses(mutated)
    exported = tmp_path / "backup.mbox"
    assert source.test_cli_runner().invoke(args=["export", str(exported)]).exit_code == 0
    target = make_app(RATELIMIT_ENABLED="false")
    result = target.test_cli_runner().invoke(args=["import", str(exported)])
    assert result.exit_code == 0 and f"stored {len(originals)}, duplicate 0, failed 0" in result.output, result.output
    restored = target.extensions["archive"]
    for email_id, addresses in originals.items():
        document = restored.find(email_id)
        assert _addresses({**document, "sender": (document.get("extra") or {}).get("sender", document.get("sender"))}) \
            == addresses
        assert sorted(document["audience"]) == sorted(archive.find(email_id)["audience"])


HOSTILE_ALPHABET = list("abcxyz019.-_+@ <>\"\\,;:()[]\t\r\n\x00\x7f\x85\u2028\u2029\u200f\u0301éü用户例子\ufffd"
                        "\ud800\udc00\x1c\x0b\x0c'`!#$%&*=?^{|}~")
REBUILT_HEADERS = {"return-path", "from", "sender", "reply-to", "to", "cc", "subject", "delivered-to",
                   "x-archive-reconstructed", "x-archive-id", "mime-version", "content-type", "content-transfer-encoding"}


def test_random_hostile_address_values_never_break_the_rebuild_or_add_a_header():
    """Addresses and names of random characters (quotes, specials, controls, Unicode line
    separators, lone surrogates, U+FFFD) in every address header and shape: the rebuild never
    raises, and read as bytes or as UTF-8 text (which splits lines at U+2028 and U+0085) it
    holds exactly the headers it wrote, each line ending in CRLF."""
    rng = random.Random(6532)

    def text(most):
        return "".join(rng.choice(HOSTILE_ALPHABET) for _ in range(rng.randint(0, most)))

    def address():
        pick = rng.random()
        if pick < 0.5:
            return {"name": rng.choice([None, text(10)]), "email": f"{text(8)}@{text(8)}"}
        if pick < 0.7:
            return text(20)
        return {"name": text(5), "email": rng.choice(INTERNATIONAL) + text(3)}

    for number in range(300):
        document = {"_id": f"{number:024x}", "subject": text(10), "text": "body",
                    "from": address(), "sender": address(), "return-path": address(),
                    "to": rng.choice([[address() for _ in range(rng.randint(0, 4))], address(), text(30)]),
                    "cc": [address() for _ in range(rng.randint(0, 3))],
                    "headers": {"Reply-To": [address() for _ in range(rng.randint(0, 3))], "Delivered-To": address()}}
        raw = b"".join(Rebuild(document).skeleton("\r\n"))
        assert all(b"\r" not in line and b"\n" not in line for line in raw.split(b"\r\n")), document
        for parsed in (email.message_from_bytes(raw, policy=policy.default),
                       email.message_from_string(raw.decode("utf-8"), policy=policy.default)):
            assert {name.lower() for name in parsed.keys()} <= REBUILT_HEADERS, document
            assert parsed.get_content_type() == "text/plain" and parsed.get_content().strip() == "body", document
        payload_from_mime(raw)  # reads without raising
