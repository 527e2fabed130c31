"""ScopedArchive: the archive as one principal sees it.

Every way in that reads or changes mail on a person's behalf (the API, the UI, sending, the
IMAP view) takes its archive from `visible_archive()` or `ScopedArchive(archive, principal)`,
never the unscoped Archive; each method adds the principal's visibility filter to the very
query it runs, so a message outside the view is exactly a message that does not exist
(same query, same answer, same code path). Operator commands (flask ...) use the Archive.

It is also where reads and changes are audited (audit.py), so no route carries its own hook:
a view, download, list, export or change is recorded before its answer leaves (a read whose
entry cannot be written answers 503 instead), and a message id that finds nothing is
recorded as `refused` (it exists outside the view) or `missing`. Every such miss runs the
same existence probe, so a refusal and a missing message take one code path and the caller
sees one 404. `quiet()` gives the same view without entries, for helpers that re-read what
an audited call already recorded (a message page's neighbours, its source tab).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bson import ObjectId
from flask import current_app, g, has_request_context, request

from ..archive import Archive
from ..deletion import MessageOnHold
from ..listing import Filters, Page
from ..mailio import mbox_export, rebuild_message
from ..retention import set_hold
from . import audit
from .principal import Principal
from .visibility import can_see, visibility_filter, within

# The request arguments that say what a list or export asked for, kept in its audit entry.
QUERY_ARGS = ("q", "from_email", "to", "subject", "since", "until", "processed", "has_attachments")


class ScopedArchive:
    """Reads and changes of messages limited to what `principal` may see."""

    def __init__(self, archive: Archive, principal: Principal, *, audited: bool = True):
        self.archive = archive
        self.principal = principal
        self.visibility = visibility_filter(principal)
        self.audited = audited

    def quiet(self) -> "ScopedArchive":
        """The same view, unaudited: for re-reads of what an audited call already recorded."""
        return ScopedArchive(self.archive, self.principal, audited=False)

    # --- the audit hooks ----------------------------------------------------------------------

    def _record(self, action: str, outcome: str = "ok", **fields: Any) -> None:
        if self.audited:
            audit.record(action, outcome, principal=self.principal, **fields)

    def _outcome_of_miss(self, email_ids: list[str]) -> dict[str, list[str]]:
        """Which of these ids exist outside the view (refused) and which do not exist
        (missing): one probe by _id, run for every miss alike."""
        valid = [ObjectId(item) for item in email_ids if ObjectId.is_valid(item)]
        existing = {str(doc["_id"]): doc.get("audience") for doc in
                    self.archive.emails.find({"_id": {"$in": valid}}, {"audience": 1})} if valid else {}
        outcomes: dict[str, list[str]] = {}
        for item in email_ids:
            hidden = item in existing and not can_see(self.principal, existing[item])
            outcomes.setdefault("refused" if hidden else "missing", []).append(item)
        return outcomes

    def _record_miss(self, action: str, email_ids: list[str], **fields: Any) -> None:
        if not self.audited or not email_ids:
            return
        for outcome, ids in self._outcome_of_miss(email_ids).items():
            self._record(action, outcome, email_ids=ids, **fields)

    def _record_one(self, action: str, email_id: str, found: bool, details: dict[str, Any] | None = None) -> None:
        if found:
            self._record(action, email_ids=[email_id], details=details)
        else:
            self._record_miss(action, [email_id], details=details)

    @staticmethod
    def _asked() -> dict[str, str] | None:
        """The filters of the current request as given (query text included), for list entries."""
        if not has_request_context():
            return None
        return {name: request.args[name][:audit.MAX_DETAIL_TEXT] for name in QUERY_ARGS if request.args.get(name)}

    def scope(self, query: dict[str, Any]) -> dict[str, Any]:
        """Any query of the emails collection narrowed to this view."""
        return within(query, self.visibility)

    def find(self, email_id: str) -> dict[str, Any] | None:
        document = self.archive.find(email_id, self.visibility)
        self._record_one("view", email_id, document is not None)
        return document

    def find_many(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Whole messages matching query inside this view (the IMAP view's pipelined FETCH)."""
        return self.archive.find_many(query, self.visibility)

    def part(self, email_id: str, *, name: str | None = None, position: int | None = None):
        record, blob = self.archive.part(email_id, name=name, position=position, within=self.visibility)
        # A position past BSON's 64-bit integers (any path segment of digits) is recorded as text.
        which = {"position": position if position < 2 ** 63 else str(position)} if position is not None \
            else {"name": (name or "")[:audit.MAX_DETAIL_TEXT]}
        self._record_one("download", email_id, record is not None, which)
        return record, blob

    def part_stream(self, record: dict[str, Any]):
        """A part's bytes from a record this view already returned."""
        return self.archive.part_stream(record)

    def read_text(self, blob_id):
        return self.archive.read_text(blob_id)

    def filter_for(self, filters: Filters) -> dict[str, Any]:
        return self.archive.filter_for(filters, self.visibility)

    def list_page(self, filters: Filters, cursor: str | None = None, limit: int = 10, count: bool = True,
                  skip: int = 0) -> Page:
        """A page of the list; audited as `list` with how many were shown, the total when
        counted, and the query as asked (ids are left out: a list shows summaries, and the
        query and time say which)."""
        page = self.archive.list_page(filters, cursor, limit, count, skip, within=self.visibility)
        self._record("list", count=len(page.emails),
                     details={"query": self._asked(), "total": page.total, "next_page": bool(cursor or skip)})
        return page

    def find_summaries(self, query: dict[str, Any], projection: dict[str, Any]):
        """Raw documents matching query inside this view (bulk actions, counts, IMAP)."""
        return self.archive.emails.find(self.scope(query), projection)

    def count(self, query: dict[str, Any]) -> int:
        return self.archive.emails.count_documents(self.scope(query))

    def set_processed(self, email_id: str, processed: bool) -> dict[str, Any] | None:
        document = self.archive.set_processed(email_id, processed, self.visibility)
        self._record_one("processed", email_id, document is not None, {"processed": processed})
        return document

    def set_hold(self, email_id: str, hold: bool) -> dict[str, Any] | None:
        document = set_hold(self.archive, email_id, hold, self.visibility)
        self._record_one("hold", email_id, document is not None, {"hold": hold})
        return document

    def delete(self, email_id: str) -> bool:
        """Raises deletion.MessageOnHold for a held message inside the view."""
        try:
            deleted = self.archive.deleter.delete(email_id, self.visibility)
        except MessageOnHold:
            self._record("delete", "held", email_ids=[email_id])
            raise
        self._record_one("delete", email_id, deleted)
        return deleted

    def set_processed_many(self, email_ids: list[str], processed: bool) -> int:
        """Mark several messages (a bulk action): one entry for the changed ones."""
        changed = [item for item in email_ids if self.archive.set_processed(item, processed, self.visibility)]
        if changed:
            self._record("processed", email_ids=changed, count=len(changed), details={"processed": processed})
        self._record_miss("processed", [item for item in email_ids if item not in changed],
                          details={"processed": processed})
        return len(changed)

    def delete_many(self, email_ids: list[str]) -> tuple[int, int]:
        """Delete several messages (a bulk action); returns (deleted, kept on hold), with one
        entry per outcome."""
        deleted, held, missed = [], [], []
        for item in email_ids:
            try:
                (deleted if self.archive.deleter.delete(item, self.visibility) else missed).append(item)
            except MessageOnHold:
                held.append(item)
        if deleted:
            self._record("delete", email_ids=deleted, count=len(deleted))
        if held:
            self._record("delete", "held", email_ids=held, count=len(held))
        self._record_miss("delete", missed)
        return len(deleted), len(held)

    def rebuild(self, email_id: str) -> Iterator[bytes] | None:
        """The message as MIME (.eml bytes), or None when it is not in this view."""
        chunks = rebuild_message(self.quiet(), email_id)
        self._record_one("download", email_id, chunks is not None, {"format": "eml"})
        return chunks

    def mbox(self, filters: Filters) -> Iterator[bytes]:
        """The view's mail as mbox; audited as `export` with the number of messages it holds
        when it starts (mail arriving during a long export may add a few)."""
        query = self.filter_for(filters)
        if self.audited:
            self._record("export", count=self.archive.emails.count_documents(query),
                         details={"query": self._asked(), "format": "mbox"})
        return mbox_export(self.archive, query)


def visible_archive(audited: bool = True) -> ScopedArchive:
    """The archive as the request's principal (g.principal, set by the API or UI guard) sees
    it; audited unless told otherwise (a re-read of what was already recorded)."""
    return ScopedArchive(current_app.extensions["archive"], g.principal, audited=audited)
