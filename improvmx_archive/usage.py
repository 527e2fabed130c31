"""What the archive holds, in bytes: message bodies, parts as received, and what GridFS
really keeps. One answer for the metrics and the UI's overview.

Parts are counted wherever they are kept: small ones ride inline in the message document,
larger ones live once per digest in GridFS, so "what deduplication saved" compares the
GridFS-backed parts and bodies with the blobs actually stored. The figures take several
aggregations over the whole archive, so they are computed by one worker on one host at a time
(under a lease) and kept in MongoDB, where every reader finds them: at most every few minutes
for the metrics, and again whenever mail was added or deleted for the UI.
Plain $unwind/$match/$group only: SecantusDB, unlike MongoDB, does not sum an array in $project.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .changes import content_mark
from .lease import Lease
from .times import as_utc

SNAPSHOTS = "archive_usage"
SNAPSHOT_ID = "storage"
USAGE_LEASE = "archive-usage"
REFRESH_EVERY = timedelta(minutes=5)

PART_KINDS = ("attachments", "inlines")
SPILLED_BODIES = ("bodies.text", "bodies.html", "overflow")


def _total(collection, pipeline: list[dict], field: str) -> int:
    rows = list(collection.aggregate([*pipeline, {"$group": {"_id": None, "total": {"$sum": field}}}]))
    return int(rows[0]["total"] or 0) if rows else 0


def _part_bytes(emails, kind: str, *, in_gridfs: bool) -> int:
    pipeline: list[dict] = [{"$project": {kind: 1}}, {"$unwind": f"${kind}"}]
    if in_gridfs:
        pipeline.append({"$match": {f"{kind}.blob_id": {"$exists": True}}})
    return _total(emails, pipeline, f"${kind}.size")


def storage_usage(database) -> dict[str, int]:
    """bodies: message bytes that are not parts; attachments: attachment and inline bytes
    as received; blob_bytes: what GridFS stores; dedup_saved: GridFS-backed bytes that the
    one-blob-per-digest rule did not have to store again."""
    emails = database.emails
    total = _total(emails, [], "$size")
    parts = sum(_part_bytes(emails, kind, in_gridfs=False) for kind in PART_KINDS)
    gridfs_backed = sum(_part_bytes(emails, kind, in_gridfs=True) for kind in PART_KINDS) + sum(
        _total(emails, [{"$match": {f"{field}.blob_id": {"$exists": True}}}], f"${field}.size")
        for field in SPILLED_BODIES)
    blob_bytes = _total(database["blobs.files"], [], "$length")
    return {"bodies": max(0, total - parts), "attachments": parts, "blob_bytes": blob_bytes,
            "dedup_saved": max(0, gridfs_backed - blob_bytes)}


def current_usage(database, max_age: timedelta = REFRESH_EVERY, follow_changes: bool = False) -> dict[str, int]:
    """The newest storage figures, recomputed when older than max_age by whichever caller
    takes the lease; the others keep answering with the previous figures meanwhile.

    follow_changes (the UI, next to exact counts): figures computed before mail was added
    or deleted (changes.content_mark) are stale at any age, so they agree with the rest
    of the page; the lease still lets one computation run at a time."""
    snapshots = database[SNAPSHOTS]
    snapshot = snapshots.find_one({"_id": SNAPSHOT_ID})
    now = datetime.now(timezone.utc)
    mark = list(content_mark(database))
    lease = Lease(database, USAGE_LEASE)
    if snapshot is not None:
        current = not follow_changes or snapshot.get("mark") == mark
        if (as_utc(snapshot["computed_at"]) > now - max_age and current) or not lease.acquire(max_age):
            return snapshot["usage"]
    try:
        usage = storage_usage(database)
        snapshots.replace_one({"_id": SNAPSHOT_ID}, {"usage": usage, "computed_at": now, "mark": mark},
                              upsert=True)
    finally:
        lease.release()
    return usage
