"""A cheap mark of what the archive holds, so figures cached by any worker on any host can
tell that mail was added, deleted or re-tagged since they were computed.

An insert shows in the collection's count (`estimated_document_count`: metadata, no scan),
so ingest pays nothing. Whatever can leave the count unchanged or change a message's tags
(deletes, which may coincide with inserts; backfills of derived fields) bumps a counter in
one small document. The mark is both; a cached figure computed under another mark is stale.
"""

from __future__ import annotations

STATE = "archive_changes"
_DOCUMENT = "emails"


def note_change(database) -> None:
    """Record a change that the message count alone might not show (one small upsert)."""
    database[STATE].update_one({"_id": _DOCUMENT}, {"$inc": {"generation": 1}}, upsert=True)


def content_mark(database) -> tuple[int, int]:
    """(generation, message count): equal marks mean the same mail, as far as figures go.
    Read it before computing a figure, so a change during the computation makes it stale."""
    state = database[STATE].find_one({"_id": _DOCUMENT}) or {}
    return int(state.get("generation", 0)), int(database.emails.estimated_document_count())
