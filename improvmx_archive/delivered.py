"""`delivered_to` for messages stored before the field existed, derived from what they keep
(their Delivered-To headers and envelope), so the UI's alias list covers older mail too."""

from __future__ import annotations

from collections.abc import Callable

from .payload import DELIVERED_TO, delivered_addresses

BACKFILL_BATCH = 500
MISSING = {DELIVERED_TO: {"$exists": False}}


def missing_count(emails) -> int:
    return emails.count_documents(MISSING)


def backfill(emails, progress: Callable[[int], None] | None = None) -> int:
    """Give every message without `delivered_to` its addresses, in batches. Safe from several
    processes at once: each writes the same value, and one done meanwhile is skipped."""
    updated = 0
    while True:
        batch = list(emails.find(MISSING, {"headers": 1, "extra.envelope": 1}).limit(BACKFILL_BATCH))
        if not batch:
            return updated
        for document in batch:
            extra = document.get("extra") if isinstance(document.get("extra"), dict) else {}
            addresses = delivered_addresses(extra.get("envelope"), document.get("headers"))
            emails.update_one({"_id": document["_id"], **MISSING}, {"$set": {DELIVERED_TO: addresses}})
        updated += len(batch)
        if progress:
            progress(len(batch))
