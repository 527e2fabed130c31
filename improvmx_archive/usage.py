"""What the archive holds, in bytes: message bodies, parts as received, and what GridFS
really keeps. One answer for the metrics and the UI's overview.

Parts are counted wherever they are kept: small ones ride inline in the message document,
larger ones live once per digest in GridFS, so "what deduplication saved" compares the
GridFS-backed parts and bodies with the blobs actually stored. Each figure is one
aggregation over the collection: callers cache the answer (a few minutes), never per request.
Plain $unwind/$match/$group only: SecantusDB, unlike MongoDB, does not sum an array in $project.
"""

from __future__ import annotations

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
