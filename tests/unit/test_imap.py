"""The IMAP view's parts on mongomock: numbering, mailboxes per person, SEARCH compilation,
sections of a rebuilt message, logins, settings. The protocol itself is tested from
outside with real clients (tests/integration/test_imap_secantus.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from email.utils import format_datetime

import pytest
from twisted.mail.imap4 import _FetchParser

from improvmx_archive.access.principal import Principal
from improvmx_archive.access.scoped import ScopedArchive
from improvmx_archive.config import ConfigError, ImapSettings
from improvmx_archive.imap.login import LoginRefused, check_login
from improvmx_archive.imap.mailboxes import Reader
from improvmx_archive.imap.message import RawPart, fetch_items
from improvmx_archive.imap.numbering import Numbering, cached_size, ensure_indexes, numbering_state
from improvmx_archive.imap.search import NOTHING, SearchCompiler, SearchError
from improvmx_archive.listing import Filters
from improvmx_archive.sample import payload_from_mime
from tests.conftest import API_KEY

DOMAIN = "archive.test"


def _payload(number: int, to: str, attachment: bool = False) -> dict:
    message = EmailMessage()
    message["From"] = f"sender{number}@example.org"
    message["To"] = to
    message["Subject"] = f"Subject {number}"
    message["Date"] = format_datetime(datetime(2025, 1, 1, tzinfo=timezone.utc))
    message.set_content(f"Body {number}")
    if attachment:
        message.add_attachment(b"\x00\x01" * 100, maintype="application", subtype="octet-stream",
                               filename="Data File.BIN")
    return payload_from_mime(message.as_bytes())


@pytest.fixture
def archive(app):
    archive = app.extensions["archive"]
    ensure_indexes(archive.database)
    return archive


def _store(archive, number: int, to: str, received_at: datetime, **options) -> str:
    return archive.ingest(_payload(number, to, **options), received_at=received_at).email_id


def test_numbering_is_ascending_by_arrival_and_new_mail_always_numbers_higher(archive):
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    later = _store(archive, 1, f"a@{DOMAIN}", start + timedelta(days=2))
    earlier = _store(archive, 2, f"b@{DOMAIN}", start + timedelta(days=1))
    numbering = Numbering(archive, (DOMAIN,))
    assert numbering.number_pending() == 2
    uids = {str(d["_id"]): d["imap_uid"] for d in archive.emails.find({}, {"imap_uid": 1})}
    assert uids[earlier] < uids[later]
    state = numbering_state(archive.database)
    assert state["visible_through"] == max(uids.values()) and state["next_uid"] > max(uids.values())
    # An import with a date older than everything still numbers above all existing UIDs.
    imported = _store(archive, 3, f"a@{DOMAIN}", start - timedelta(days=3650))
    assert numbering.number_pending() == 1
    assert archive.emails.find_one({"_id": archive.emails.find_one({"imap_uid": {"$gt": uids[later]}})["_id"]})
    assert str(archive.emails.find_one({"imap_uid": {"$gt": uids[later]}})["_id"]) == imported
    assert numbering.number_pending() == 0
    # Sizes are cached for the current rebuild and equal the rebuilt bytes' length.
    for document in archive.emails.find({}):
        rebuilt = b"".join(ScopedArchive(archive, Principal.operator(), audited=False).rebuild(str(document["_id"])))
        assert cached_size(document) == len(rebuilt)
    assert sorted(d["_id"] for d in archive.database.imap_aliases.find()) == [f"a@{DOMAIN}", f"b@{DOMAIN}"]
    # The counter's state lost (a restore without it): numbering goes on above every UID.
    highest = max(d["imap_uid"] for d in archive.emails.find({}, {"imap_uid": 1}))
    archive.database.imap_state.delete_many({})
    _store(archive, 4, f"b@{DOMAIN}", start)
    assert numbering.number_pending() == 1
    assert archive.emails.find_one({"subject": "Subject 4"})["imap_uid"] == highest + 1
    assert numbering_state(archive.database)["visible_through"] == highest + 1


def test_a_member_sees_only_mailboxes_and_messages_of_their_grants(archive):
    now = datetime.now(timezone.utc)
    _store(archive, 1, f"sales@{DOMAIN}", now)
    support = _store(archive, 2, f"support@{DOMAIN}", now)
    Numbering(archive, (DOMAIN,)).number_pending()
    member = Principal(name="mia", role="member", person_id="p1", email="mia@x.test", grants=(f"support@{DOMAIN}",))
    reader = Reader(archive, member)
    names = [box.name for box in reader.mailboxes()]
    assert names == ["INBOX", f"support@{DOMAIN}", "Sent"]
    assert reader.mailbox(f"sales@{DOMAIN}") is None
    _, through = reader.uidvalidity()
    inbox = reader.mailbox("inbox")
    found = reader.metadata(list(reader.uids(inbox, through)), inbox, through)
    assert [str(meta["_id"]) for meta in found.values()] == [support]
    admin = Reader(archive, Principal.operator())
    assert [box.name for box in admin.mailboxes()] == ["INBOX", f"sales@{DOMAIN}", f"support@{DOMAIN}", "Sent"]
    assert admin.status(admin.mailbox("INBOX"))["MESSAGES"] == 2


def test_search_keys_compile_to_the_archives_own_search():
    calls = []

    def filter_for(filters: Filters):
        calls.append(filters.search.text)
        return {"q": filters.search.text}

    compiler = SearchCompiler(filter_for, lambda message_set, uid: [4, 5], lambda: [1, 2])
    assert compiler.compile([b"FROM", b"ann@example.org"]) == {"q": 'from:"ann@example.org"'}
    assert compiler.compile([b"TEXT", b"hello world"]) == {"q": '"hello world"'}
    assert compiler.compile([b"NOT", b"SEEN"]) == {"$nor": [{"imap_uid": {"$in": [1, 2]}}]}
    assert compiler.compile([b"UNSEEN", b"OR", b"SUBJECT", b"a", b"BODY", b"b"]) == {"$and": [
        {"imap_uid": {"$nin": [1, 2]}}, {"$or": [{"q": 'subject:"a"'}, {"q": 'body:"b"'}]}]}
    assert compiler.compile([b"SINCE", b"1-Feb-2024"]) == {
        "received_at": {"$gte": datetime(2024, 2, 1, tzinfo=timezone.utc)}}
    assert compiler.compile([b"ON", b"1-Feb-2024"])["received_at"]["$lt"] == datetime(2024, 2, 2, tzinfo=timezone.utc)
    assert compiler.compile([b"LARGER", b"100"]) == {"imap_size.n": {"$gt": 100}}
    assert compiler.compile([b"UID", b"4:*"]) == {"imap_uid": {"$in": [4, 5]}}
    assert compiler.compile([b"ALL"]) == {} and compiler.compile([b"FLAGGED"]) == NOTHING
    assert compiler.compile([[b"DELETED"]]) == NOTHING
    for bad in ([b"FROM"], [b"SINCE", b"yesterday"], [b"LARGER", b"big"], [b"XYZZY"], [b"HEADER", b"X-Foo", b"y"]):
        with pytest.raises(SearchError):
            compiler.compile(bad)


def _parse(items: bytes):
    parser = _FetchParser()
    parser.parseString(items)
    return parser.result


def test_sections_and_partial_fetches_are_slices_of_the_rebuilt_bytes(archive):
    email_id = _store(archive, 1, f"a@{DOMAIN}", datetime.now(timezone.utc), attachment=True)
    raw = b"".join(ScopedArchive(archive, Principal.operator(), audited=False).rebuild(email_id))
    message = RawPart(raw)
    assert message.isMultipart() and len(message.children()) == 2
    assert raw.startswith(message.header_bytes) and raw.endswith(message.body)
    attachment = message.section((1,))
    assert attachment.headers.get_filename() == "Data File.BIN"
    assert attachment.body in raw and attachment.body.strip().endswith(b"=")
    response = b"".join(fetch_items(
        _parse(b"(BODY.PEEK[]<5.20> BODY[2.MIME] BODY[HEADER.FIELDS (SUBJECT)] RFC822.SIZE)"),
        7, [], len(raw), datetime(2025, 1, 2, tzinfo=timezone.utc), raw, True))
    assert response.startswith(b"(UID 7 BODY[]<5> {20}\r\n" + raw[5:25] + b" BODY[2.MIME] {")
    assert b"BODY[HEADER.FIELDS (Subject)] {22}\r\nSubject: Subject 1\r\n\r\n" in response
    assert response.endswith(b"RFC822.SIZE %d)" % len(raw))
    structure = b"".join(fetch_items(_parse(b"(BODYSTRUCTURE ENVELOPE INTERNALDATE)"), 7, ["\\Seen"], len(raw),
                                     datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), raw, False))
    whole = fetch_items(_parse(b"(BODY.PEEK[])"), 7, [], len(raw), None, raw, False, with_flags=True)
    assert whole == [b"(", b"BODY[] {%d}\r\n" % len(raw), raw, b" ", b"FLAGS ()", b")"] and whole[2] is raw
    assert b'INTERNALDATE "02-Jan-2025 03:04:05 +0000"' in structure
    assert b'"Subject 1"' in structure and b'"mixed"' in structure.lower()
    # File names keep their case and lose their quotes (Twisted's builder lower-cases them).
    assert b'("name" "Data File.BIN")' in structure and b'("attachment" ("filename" "Data File.BIN"))' in structure


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cpython"


def _leaves(structure: list, path: tuple[int, ...] = ()):
    """(section path, size) of every single part in a BODYSTRUCTURE list."""
    if isinstance(structure[0], list):
        children = structure[:next(i for i, item in enumerate(structure) if isinstance(item, str))]
        for number, child in enumerate(children):
            yield from _leaves(child, path + (number,))
    else:
        yield path or (0,), structure[6]


def test_every_real_world_message_has_a_structure_whose_sizes_match_its_sections(archive):
    from improvmx_archive.imap.message import body_structure, section_bytes

    reader = ScopedArchive(archive, Principal.operator(), audited=False)
    checked = 0
    for path in sorted(FIXTURES.glob("msg_*.txt")):
        try:
            payload = payload_from_mime(path.read_bytes())
        except Exception:  # noqa: BLE001 - what mailparse cannot read never reaches the archive
            continue
        email_id = archive.ingest(payload).email_id
        message = RawPart(b"".join(reader.rebuild(email_id)))
        structure = body_structure(message, True)
        fetch_items(_parse(b"(BODYSTRUCTURE ENVELOPE BODY)"), 1, [], len(message.raw), None, message.raw, False)
        for section, size in _leaves(structure):
            item = _parse(b"(BODY[" + b".".join(b"%d" % (n + 1) for n in section) + b"])")[0]
            assert len(section_bytes(message, item)) == size, (path.name, section)
        checked += 1
    assert checked >= 40


def test_logins_need_the_matching_name_a_live_key_and_the_imap_scope(app):
    authenticator, lockout = app.extensions["authenticator"], app.extensions["lockout"]
    people, keys = app.extensions["people"], app.extensions["keys"]
    person = people.add("ann", "ann@people.test")
    imap_key, record = keys.create(str(person["_id"]), "mail", ["imap"])
    read_key, _ = keys.create(str(person["_id"]), "api", ["read"])
    assert check_login(authenticator, lockout, "operator", API_KEY, "192.0.2.1").is_operator
    assert check_login(authenticator, lockout, "Ann@People.test", imap_key, "192.0.2.1").person_id
    with pytest.raises(LoginRefused) as refused:
        check_login(authenticator, lockout, "ann@people.test", read_key, "192.0.2.1")
    assert refused.value.reason == "scope"
    with pytest.raises(LoginRefused):
        check_login(authenticator, lockout, "bob@people.test", imap_key, "192.0.2.1")
    keys.revoke(record["_id"])
    with pytest.raises(LoginRefused) as refused:
        check_login(authenticator, lockout, "ann@people.test", imap_key, "192.0.2.1")
    assert refused.value.reason == "revoked"
    # Guesses count in the shared lockout: enough of them block the address.
    for _ in range(5):
        with pytest.raises(LoginRefused):
            check_login(authenticator, lockout, "operator", "wrong-key-0123456789", "192.0.2.9")
    with pytest.raises(LoginRefused) as refused:
        check_login(authenticator, lockout, "operator", API_KEY, "192.0.2.9")
    assert refused.value.reason == "blocked"


def test_imap_settings_are_validated(tmp_path):
    assert ImapSettings.from_env({}, dotenv_path=None).enabled is False
    with pytest.raises(ConfigError, match="IMAP_TLS_CERT"):
        ImapSettings.from_env({"IMAP_ENABLED": "true"}, dotenv_path=None)
    with pytest.raises(ConfigError, match="differ"):
        ImapSettings.from_env({"IMAP_PORT": "1143", "IMAP_STARTTLS_PORT": "1143"}, dotenv_path=None)
    settings = ImapSettings.from_env({"IMAP_ENABLED": "yes", "IMAP_TLS_CERT": "/c.pem", "IMAP_TLS_KEY": "/k.pem",
                                      "IMAP_STARTTLS_PORT": "143"}, dotenv_path=None)
    assert (settings.port, settings.starttls_port, str(settings.tls_cert)) == (993, 143, "/c.pem")


def test_flask_imap_check_reports_the_certificate_and_numbering(app, tmp_path, monkeypatch):
    from devtools.processes import self_signed_certificate

    monkeypatch.chdir(tmp_path)  # no developer's .env
    for name in ("IMAP_ENABLED", "IMAP_TLS_CERT", "IMAP_TLS_KEY", "IMAP_PORT", "IMAP_STARTTLS_PORT"):
        monkeypatch.delenv(name, raising=False)
    runner = app.test_cli_runner()
    off = runner.invoke(args=["imap", "check"])
    assert off.exit_code == 0 and "the IMAP view is off" in off.output
    cert, key = self_signed_certificate(tmp_path / "tls")
    monkeypatch.setenv("IMAP_ENABLED", "true")
    monkeypatch.setenv("IMAP_TLS_CERT", str(cert))
    monkeypatch.setenv("IMAP_TLS_KEY", str(key))
    ready = runner.invoke(args=["imap", "check"])
    assert ready.exit_code == 0, ready.output
    assert "certificate:" in ready.output and "(29 days)" in ready.output and "renew soon" not in ready.output
    assert "numbering: not started yet" in ready.output
    other_cert, _ = self_signed_certificate(tmp_path / "other")
    monkeypatch.setenv("IMAP_TLS_CERT", str(other_cert))  # a key that does not match
    mismatched = runner.invoke(args=["imap", "check"])
    assert mismatched.exit_code == 1 and "cannot be used" in mismatched.output


def test_international_headers_reach_envelope_as_encoded_words(archive):
    from email.header import decode_header, make_header

    message = EmailMessage()
    message["From"] = "Zoë Ünïcode <zoe@example.org>"
    message["To"] = f"ventes@{DOMAIN}"
    message["Subject"] = "Café ☕ offert"
    message.set_content("Bonjour")
    message.add_attachment(b"x", maintype="application", subtype="pdf", filename="Reçu été.pdf")
    email_id = archive.ingest(payload_from_mime(message.as_bytes())).email_id
    raw = b"".join(ScopedArchive(archive, Principal.operator(), audited=False).rebuild(email_id))
    response = b"".join(fetch_items(_parse(b"(ENVELOPE BODYSTRUCTURE)"), 1, [], len(raw), None, raw, False))
    assert response.isascii()
    subject = RawPart(raw).getHeaders(False, "subject")["subject"]
    assert str(make_header(decode_header(subject))) == "Café ☕ offert"
    assert subject.encode() in response


def test_fetch_batches_are_cut_by_bytes_in_order():
    from improvmx_archive.imap.server import byte_runs

    entries = [(0, 1, 0), (1, 2, 0), (2, 3, 1), (3, None, 2), (4, 4, 3)]
    sizes = {1: 3, 2: 3, 3: 10, 4: 1}
    assert byte_runs(entries, sizes, limit=6) == [[(0, 1, 0), (1, 2, 0)], [(2, 3, 1), (3, None, 2)], [(4, 4, 3)]]
    assert byte_runs(entries, {}, limit=6) == [entries]
