"""One `blob_ids` array per message says which GridFS blobs it references; documents stored
before it existed are given it before any sweep trusts it."""

from datetime import datetime, timedelta, timezone

from improvmx_archive import blobrefs
from improvmx_archive.archive import BODY_INLINE_LIMIT
from improvmx_archive.db import OBSOLETE_EMAIL_INDEXES
from improvmx_archive.parts import INLINE_DATA
from tests.payloads import message_with_attachment


def _age_every_blob(database, days=3):
    database["blobs.files"].update_many({}, {"$set": {"uploadDate": datetime.now(timezone.utc) - timedelta(days=days)}})


def _stored(app, client, payload):
    response = client.post("/webhook", json=payload)
    assert response.status_code == 200, response.get_json()
    return app.extensions["database"].emails.find_one({"_id": __import__("bson").ObjectId(response.get_json()["email_id"])})


def test_every_blob_a_message_uses_is_in_its_blob_ids(app, client):
    payload = message_with_attachment(b"\x89PNG" * 300_000)
    payload["html"] = "<p>" + "x" * (BODY_INLINE_LIMIT + 10) + "</p>"
    document = _stored(app, client, payload)
    gridfs_parts = [r["blob_id"] for r in document["attachments"] + document["inlines"] if "blob_id" in r]
    expected = set(gridfs_parts) | {document["bodies"]["html"]["blob_id"]}
    assert set(document["blob_ids"]) == expected and len(document["blob_ids"]) == len(expected)
    assert set(app.extensions["database"]["blobs.files"].distinct("_id")) == expected


def _as_before_blob_ids(database):
    """Turn the stored documents back into the layout of versions without blob_ids."""
    database.emails.update_many({}, {"$unset": {"blob_ids": ""}})


def test_gc_gives_old_documents_blob_ids_before_judging_their_blobs(app, client):
    database = app.extensions["database"]
    document = _stored(app, client, message_with_attachment(b"old layout" * 200_000))
    _as_before_blob_ids(database)
    _age_every_blob(database)
    assert app.extensions["archive"].gc_blobs(timedelta(hours=1)) == 0
    assert database["blobs.files"].count_documents({}) == len(document["blob_ids"]) > 0
    assert database.emails.find_one({})["blob_ids"] == document["blob_ids"]


def test_gc_collects_nothing_while_a_document_lacks_blob_ids(app, client, monkeypatch):
    database = app.extensions["database"]
    archive = app.extensions["archive"]
    _stored(app, client, message_with_attachment(b"unmigrated" * 200_000))
    orphan = archive.blobs.put(iter([b"orphan"]), "0" * 64, 6, "application/octet-stream")
    _as_before_blob_ids(database)
    _age_every_blob(database)
    monkeypatch.setattr(blobrefs, "backfill", lambda emails, progress=None: 0)  # e.g. it failed part-way
    assert archive.gc_blobs(timedelta(hours=1)) == 0
    assert database["blobs.files"].find_one({"_id": orphan}) is not None
    monkeypatch.undo()
    assert archive.gc_blobs(timedelta(hours=1)) == 1
    assert database["blobs.files"].find_one({"_id": orphan}) is None


def test_create_indexes_migrates_and_drops_the_five_old_blob_indexes(app, client):
    database = app.extensions["database"]
    for name in OBSOLETE_EMAIL_INDEXES:
        database.emails.create_index([(name.replace("_blobs", "") + ".blob_id", 1)], name=name)
    for subject in ("one", "two", "three"):
        _stored(app, client, message_with_attachment(subject.encode() * 100_000, subject=subject))
    _as_before_blob_ids(database)
    result = app.test_cli_runner().invoke(args=["create-indexes"])
    assert result.exit_code == 0, result.output
    assert "3 message(s) given blob_ids" in result.output
    assert blobrefs.unmigrated_count(database.emails) == 0
    indexes = database.emails.index_information()
    assert "by_blob" in indexes and not set(OBSOLETE_EMAIL_INDEXES) & set(indexes)
    again = app.test_cli_runner().invoke(args=["create-indexes"])
    assert "0 message(s) given blob_ids" in again.output


def test_backfill_reads_every_old_reference_shape():
    text, html, overflow, part = (object() for _ in range(4))
    document = {"attachments": [{"blob_id": part}, {INLINE_DATA: b"x"}], "inlines": [{"blob_id": part}],
                "bodies": {"text": {"blob_id": text}, "html": {"blob_id": html}}, "overflow": {"blob_id": overflow}}
    assert blobrefs.referenced_blobs(document) == [part, text, html, overflow]


def test_part_stream_reads_inline_and_gridfs_parts_alike(app):
    archive = app.extensions["archive"]
    data = bytes(range(256)) * 9000
    blob_id = archive.blobs.put(iter([data]), "3" * 64, len(data), "application/octet-stream")
    for record in ({"blob_id": blob_id}, {INLINE_DATA: data}):
        stream = archive.part_stream(record)
        assert stream.length == len(data) and b"".join(stream.chunks) == data
