"""Giving older messages a field that ingest now derives (blob_ids, audience, delivered_to,
thread_refs): one batched loop for all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

BATCH = 500


def fill_missing(emails, field: str, projection: Mapping[str, int], derive: Callable[[dict[str, Any]], Any],
                 progress: Callable[[int], None] | None = None) -> int:
    """Set `field` to derive(document) on every message that lacks it, BATCH at a time, and
    return how many. Safe from several processes at once: each writes the same value, and a
    message given the field meanwhile is skipped by the filter."""
    missing = {field: {"$exists": False}}
    updated = 0
    while True:
        batch = list(emails.find(missing, dict(projection)).limit(BATCH))
        if not batch:
            return updated
        for document in batch:
            emails.update_one({"_id": document["_id"], **missing}, {"$set": {field: derive(document)}})
        updated += len(batch)
        if progress:
            progress(len(batch))
