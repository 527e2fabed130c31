"""Storage figures for the metrics and the overview count parts wherever they are kept."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from improvmx_archive.lease import Lease
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


def test_the_snapshot_is_reused_until_it_is_stale(app, monkeypatch):
    from improvmx_archive import usage

    database = app.extensions["archive"].database
    computed = []
    monkeypatch.setattr(usage, "storage_usage", lambda db: computed.append(1) or {"bodies": len(computed)})
    assert usage.current_usage(database) == {"bodies": 1}
    assert usage.current_usage(database) == {"bodies": 1}
    assert len(computed) == 1
    assert usage.current_usage(database, max_age=timedelta(0)) == {"bodies": 2}


def test_a_stale_snapshot_is_served_while_another_worker_recomputes(app, monkeypatch):
    from improvmx_archive import usage

    database = app.extensions["archive"].database
    database[usage.SNAPSHOTS].insert_one({"_id": usage.SNAPSHOT_ID, "usage": {"bodies": 7},
                                          "computed_at": datetime.now(timezone.utc) - timedelta(hours=1)})
    assert Lease(database, usage.USAGE_LEASE).acquire(timedelta(minutes=5))  # someone else is on it
    monkeypatch.setattr(usage, "storage_usage", lambda db: pytest.fail("computed twice at once"))
    assert usage.current_usage(database) == {"bodies": 7}
