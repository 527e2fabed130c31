"""ScopedArchive: the archive as one principal sees it.

Every way in that reads or changes mail on a person's behalf (the API, the UI, sending, the
IMAP view) takes its archive from `visible_archive()` or `ScopedArchive(archive, principal)`,
never the unscoped Archive; each method adds the principal's visibility filter to the very
query it runs, so a message outside the view is exactly a message that does not exist
(same query, same answer, same code path). Operator commands (flask ...) use the Archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import current_app, g

from ..archive import Archive
from ..listing import Filters, Page
from ..mailio import mbox_export, rebuild_message
from ..retention import set_hold
from .principal import Principal
from .visibility import visibility_filter, within


class ScopedArchive:
    """Reads and changes of messages limited to what `principal` may see."""

    def __init__(self, archive: Archive, principal: Principal):
        self.archive = archive
        self.principal = principal
        self.visibility = visibility_filter(principal)

    def scope(self, query: dict[str, Any]) -> dict[str, Any]:
        """Any query of the emails collection narrowed to this view."""
        return within(query, self.visibility)

    def find(self, email_id: str) -> dict[str, Any] | None:
        return self.archive.find(email_id, self.visibility)

    def find_many(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Whole messages matching query inside this view (the IMAP view's pipelined FETCH)."""
        return self.archive.find_many(query, self.visibility)

    def part(self, email_id: str, *, name: str | None = None, position: int | None = None):
        return self.archive.part(email_id, name=name, position=position, within=self.visibility)

    def part_stream(self, record: dict[str, Any]):
        """A part's bytes from a record this view already returned."""
        return self.archive.part_stream(record)

    def read_text(self, blob_id):
        return self.archive.read_text(blob_id)

    def filter_for(self, filters: Filters) -> dict[str, Any]:
        return self.archive.filter_for(filters, self.visibility)

    def list_page(self, filters: Filters, cursor: str | None = None, limit: int = 10, count: bool = True,
                  skip: int = 0) -> Page:
        return self.archive.list_page(filters, cursor, limit, count, skip, within=self.visibility)

    def find_summaries(self, query: dict[str, Any], projection: dict[str, Any]):
        """Raw documents matching query inside this view (bulk actions, counts, IMAP)."""
        return self.archive.emails.find(self.scope(query), projection)

    def count(self, query: dict[str, Any]) -> int:
        return self.archive.emails.count_documents(self.scope(query))

    def set_processed(self, email_id: str, processed: bool) -> dict[str, Any] | None:
        return self.archive.set_processed(email_id, processed, self.visibility)

    def set_hold(self, email_id: str, hold: bool) -> dict[str, Any] | None:
        return set_hold(self.archive, email_id, hold, self.visibility)

    def delete(self, email_id: str) -> bool:
        """Raises deletion.MessageOnHold for a held message inside the view."""
        return self.archive.deleter.delete(email_id, self.visibility)

    def rebuild(self, email_id: str) -> Iterator[bytes] | None:
        """The message as MIME (.eml bytes), or None when it is not in this view."""
        return rebuild_message(self, email_id)

    def mbox(self, filters: Filters) -> Iterator[bytes]:
        return mbox_export(self.archive, self.filter_for(filters))


def visible_archive() -> ScopedArchive:
    """The archive as the request's principal (g.principal, set by the API or UI guard) sees it."""
    return ScopedArchive(current_app.extensions["archive"], g.principal)
