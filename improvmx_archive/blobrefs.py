"""Which GridFS blobs a message references: one `blob_ids` array per message document.

Deletion and orphan collection ask one multikey index ("is this blob still referenced?")
instead of five. Documents stored before the array existed get it from `backfill`; until
none is left, nothing may trust the array to decide that a blob is unreferenced.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from bson import ObjectId

from .backfill import fill_missing

FIELD = "blob_ids"
UNMIGRATED = {FIELD: {"$exists": False}}
# Everything a document can reference, as stored before and after the array existed.
_REFERENCING_FIELDS = {"attachments": 1, "inlines": 1, "bodies": 1, "overflow": 1}


def referenced_blobs(document: dict[str, Any]) -> list[ObjectId]:
    """Every GridFS blob id in a message document: parts, spilled bodies, overflow; each once."""
    found: dict[ObjectId, None] = {}
    for kind in ("attachments", "inlines"):
        for record in document.get(kind) or []:
            if isinstance(record, dict) and record.get("blob_id") is not None:
                found.setdefault(record["blob_id"], None)
    for info in (document.get("bodies") or {}).values():
        if isinstance(info, dict) and info.get("blob_id") is not None:
            found.setdefault(info["blob_id"], None)
    overflow = document.get("overflow")
    if isinstance(overflow, dict) and overflow.get("blob_id") is not None:
        found.setdefault(overflow["blob_id"], None)
    return list(found)


def unmigrated_count(emails) -> int:
    return emails.count_documents(UNMIGRATED)


def backfill(emails, progress: Callable[[int], None] | None = None) -> int:
    """Give every document without `blob_ids` its array; returns how many."""
    return fill_missing(emails, FIELD, _REFERENCING_FIELDS, referenced_blobs, progress)


def still_referenced(emails, blob_ids: Iterable[ObjectId]) -> set[ObjectId]:
    """Which of these blobs some message references (one indexed query for the lot)."""
    wanted = list(blob_ids)
    if not wanted:
        return set()
    referenced: set[ObjectId] = set()
    for document in emails.find({FIELD: {"$in": wanted}}, {FIELD: 1}):
        referenced.update(document.get(FIELD) or ())
    return referenced.intersection(wanted)
