"""Storage figures for the metrics and the overview count parts wherever they are kept."""

from __future__ import annotations

import os

from improvmx_archive.parts import INLINE_PART_LIMIT
from improvmx_archive.usage import storage_usage
from tests.payloads import message_with_attachment


def test_inline_and_gridfs_parts_are_counted_and_only_gridfs_dedup_is_claimed(app):
    archive = app.extensions["archive"]
    shared = os.urandom(INLINE_PART_LIMIT * 2)  # over the inline limit: kept once in GridFS
    small = os.urandom(1000)  # kept inline in each message document
    for subject in ("first", "second"):
        archive.ingest(message_with_attachment(shared, subject=subject))
    archive.ingest(message_with_attachment(small, subject="small"))

    usage = storage_usage(archive.database)

    assert usage["attachments"] == 2 * len(shared) + len(small)
    assert usage["blob_bytes"] == len(shared)
    assert usage["dedup_saved"] == len(shared)
    documents = list(archive.emails.find({}, {"size": 1}))
    assert usage["bodies"] == sum(d["size"] for d in documents) - usage["attachments"] > 0


def test_an_empty_archive_holds_nothing(app):
    assert storage_usage(app.extensions["archive"].database) == {
        "bodies": 0, "attachments": 0, "blob_bytes": 0, "dedup_saved": 0}
