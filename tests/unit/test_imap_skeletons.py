"""The IMAP view's cached rebuild skeletons (imap/skeletons.py): BODY[] from the cache is the
very bytes of the uncached rebuild (GET /emails/<id>/raw), and a cache made by another
rebuild version, from other inputs, or too large to keep is never served."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from improvmx_archive.access.principal import Principal
from improvmx_archive.access.scoped import ScopedArchive
from improvmx_archive.imap import skeletons
from improvmx_archive.imap.mailboxes import Reader
from improvmx_archive.imap.numbering import REBUILD_VERSION, Numbering, ensure_indexes, numbering_state
from improvmx_archive.imap.skeletons import MAX_SKELETON_BYTES, SKELETON_FIELD, message_chunks
from improvmx_archive.mailio import MessageSource
from improvmx_archive.sample import payload_from_mime
from tests.payloads import FIXTURES

CORPUS = sorted(FIXTURES.glob("*.eml")) + sorted((FIXTURES / "cpython").glob("msg_*.txt"))


@pytest.fixture
def archive(app):
    archive = app.extensions["archive"]
    ensure_indexes(archive.database)
    return archive


def _uncached(archive, email_id: str) -> bytes:
    """The message as GET /emails/<id>/raw serves it: a fresh rebuild, no cache involved."""
    return b"".join(ScopedArchive(archive, Principal.operator(), audited=False).rebuild(email_id))


def _fetched(archive, email_id: str) -> tuple[bytes, int]:
    """BODY[] and RFC822.SIZE as the IMAP view answers a FETCH of this message."""
    reader = Reader(archive, Principal.operator())
    uid = archive.emails.find_one({"_id": archive.find(email_id)["_id"]})["imap_uid"]
    through = numbering_state(archive.database)["visible_through"]
    meta, raw = reader.messages([uid], reader.mailbox("INBOX"), through)[uid]
    assert reader.metadata([uid], reader.mailbox("INBOX"), through)[uid]["size"] == meta["size"]
    return raw, meta["size"]


def _no_rebuild(*args, **kwargs):
    raise AssertionError("rebuilt although a valid skeleton is stored")


def _ingest(archive, raw: bytes) -> str:
    return archive.ingest(payload_from_mime(raw)).email_id


def test_every_corpus_message_is_served_from_its_skeleton_byte_for_byte(archive, monkeypatch):
    ids = []
    for path in CORPUS:
        try:
            ids.append((path.name, _ingest(archive, path.read_bytes())))
        except Exception:  # noqa: BLE001 - what mailparse cannot read never reaches the archive
            continue
    assert len(ids) >= 45
    Numbering(archive).number_pending()  # sizes each message, storing its skeleton
    expected = {email_id: _uncached(archive, email_id) for _, email_id in ids}
    monkeypatch.setattr(skeletons.mailio, "Rebuild", _no_rebuild)  # from here on only the cache serves
    for name, email_id in ids:
        document = archive.find(email_id)
        assert document[SKELETON_FIELD]["v"] == REBUILD_VERSION, name
        chunks, fresh = message_chunks(archive, document, REBUILD_VERSION)
        assert fresh is None and b"".join(chunks) == expected[email_id], name
        raw, size = _fetched(archive, email_id)
        assert raw == expected[email_id] and size == len(raw), name


def test_a_skeleton_of_another_rebuild_version_is_ignored_and_replaced(archive):
    email_id = _ingest(archive, (FIXTURES / "attachments.eml").read_bytes())
    Numbering(archive).number_pending()
    expected = _uncached(archive, email_id)
    stored = archive.find(email_id)[SKELETON_FIELD]
    # A stale entry: another rebuild's version, and pieces that would show if it were served.
    stale = {**stored, "v": "an-older-rebuild", "p": [b"STALE" + piece for piece in stored["p"]]}
    archive.emails.update_one({"_id": archive.find(email_id)["_id"]}, {"$set": {SKELETON_FIELD: stale}})
    chunks, fresh = message_chunks(archive, archive.find(email_id), REBUILD_VERSION)
    assert b"".join(chunks) == expected and fresh == stored
    assert _fetched(archive, email_id) == (expected, len(expected))
    assert archive.find(email_id)[SKELETON_FIELD] == stored  # the fetch stored the current one again
    # The same stale pieces under the current version would be served: the version alone decides.
    forged = {**stored, "p": [b"STALE" + piece for piece in stored["p"]]}
    document = {**archive.find(email_id), SKELETON_FIELD: forged}
    assert b"".join(message_chunks(archive, document, REBUILD_VERSION)[0]).startswith(b"STALE")


def test_a_skeleton_of_changed_inputs_or_a_malformed_one_is_ignored(archive):
    email_id = _ingest(archive, (FIXTURES / "inline_cid.eml").read_bytes())
    Numbering(archive).number_pending()
    object_id = archive.find(email_id)["_id"]
    archive.emails.update_one({"_id": object_id}, {"$set": {"subject": "Changed after the skeleton was kept"}})
    raw, size = _fetched(archive, email_id)
    assert raw == _uncached(archive, email_id) and b"Changed after the skeleton was kept" in raw
    assert size == len(raw)
    for malformed in ({"v": REBUILD_VERSION}, {**archive.find(email_id)[SKELETON_FIELD], "s": [[99, False, False]]},
                      "not a skeleton"):
        document = {**archive.find(email_id), SKELETON_FIELD: malformed}
        chunks, fresh = message_chunks(archive, document, REBUILD_VERSION)
        assert b"".join(chunks) == raw and fresh is not None


def test_a_huge_skeleton_is_not_kept_and_still_served_exactly(archive):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.org", "b@archive.test", "Long"
    message.set_content("A long line of text.\n" * (MAX_SKELETON_BYTES // 16))
    email_id = _ingest(archive, message.as_bytes())
    Numbering(archive).number_pending()
    assert SKELETON_FIELD not in archive.find(email_id)
    raw, size = _fetched(archive, email_id)
    assert raw == _uncached(archive, email_id) and size == len(raw)
    assert SKELETON_FIELD not in archive.find(email_id)


def test_the_skeleton_never_reaches_the_api(archive, client, auth):
    email_id = _ingest(archive, (FIXTURES / "alternative.eml").read_bytes())
    Numbering(archive).number_pending()
    assert SKELETON_FIELD in archive.find(email_id)
    response = client.get(f"/emails/{email_id}", headers=auth)
    assert response.status_code == 200 and SKELETON_FIELD not in response.get_data(as_text=True)
    listing = client.get("/emails", headers=auth)
    assert listing.status_code == 200 and SKELETON_FIELD not in listing.get_data(as_text=True)
    assert b"".join(MessageSource(archive, archive.find(email_id)).chunks()) == _uncached(archive, email_id)
