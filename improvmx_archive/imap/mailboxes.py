"""The mailboxes one person sees and the MongoDB reads behind them (blocking: run off the reactor).

Every read goes through ScopedArchive (the visibility rule); a mailbox adds its own
condition: INBOX everything the person may see, one mailbox per alias they may see, `Sent`
what was sent from the archive. Only numbered messages (imap_uid <= visible_through) show.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING

from ..access.principal import Principal
from ..access.scoped import ScopedArchive
from ..access.visibility import can_see
from ..audience import audience_of
from .numbering import (
    REBUILD_VERSION, SENT_SOURCE, SIZE_FIELD, UID_FIELD, cached_size, known_aliases, numbering_state, rebuilt_size,
)
from .skeletons import SKELETON_FIELD, message_chunks

INBOX = "INBOX"
SENT = "Sent"
SEEN = "imap_seen"
# Mailboxes are flat (each \HasNoChildren); "/" is the delimiter clients expect. Alias names
# keep their dots: mutt treats "." as a delimiter unless told `set imap_delim_chars=/`.
DELIMITER = "/"
META_FIELDS = {"_id": 1, UID_FIELD: 1, "received_at": 1, SIZE_FIELD: 1}


@dataclass(frozen=True)
class MailboxSpec:
    """A mailbox: its name, its condition on the emails collection, its LIST attributes."""

    name: str
    condition: dict[str, Any]
    attributes: tuple[str, ...] = ()


class Reader:
    """One person's view of the archive over IMAP. Blocking; shared by a session's threads."""

    def __init__(self, archive, principal: Principal):
        # IMAP records its own entries (imap_login, imap_fetch: imap/login.py) from worker threads
        # outside any Flask app, so the view's per-call hooks stay off here.
        self.scoped = ScopedArchive(archive, principal, audited=False)
        self.archive = archive
        self.principal = principal
        self.database = archive.database
        self.seen = archive.database[SEEN]
        # \Seen belongs to a person (the operator key is one reader of its own).
        self.reader_id = principal.person_id or "operator"

    # -- mailboxes ------------------------------------------------------------------------

    def mailboxes(self) -> list[MailboxSpec]:
        aliases = set(known_aliases(self.database))
        for grant in self.principal.grants:
            if not grant.startswith("*@"):
                aliases.add(grant.strip().lower())
        visible = sorted(a for a in aliases if can_see(self.principal, audience_of([a])))
        return ([MailboxSpec(INBOX, {})]
                + [MailboxSpec(alias, {"audience": alias}) for alias in visible if alias.upper() != INBOX]
                + [MailboxSpec(SENT, {"source": SENT_SOURCE}, ("\\Sent",))])

    def mailbox(self, name: str) -> MailboxSpec | None:
        wanted = INBOX if name.upper() == INBOX else name.lower()
        return next((box for box in self.mailboxes() if box.name.lower() == wanted.lower()), None)

    def uidvalidity(self) -> tuple[int, int]:
        state = numbering_state(self.database)
        return state["uidvalidity"], state["visible_through"]

    def query(self, box: MailboxSpec, through: int, extra: list[dict[str, Any]] | None = None,
              low: int = 1) -> dict[str, Any]:
        """The mailbox's published messages (UIDs low..through) meeting extra; ScopedArchive
        adds the visibility rule when it runs the query."""
        conditions = [box.condition] if box.condition else []
        conditions += extra or []
        query: dict[str, Any] = {UID_FIELD: {"$gte": low, "$lte": through}}
        if conditions:
            query["$and"] = conditions
        return query

    def hint(self, box: MailboxSpec) -> str | None:
        """imap_audience_uid when an audience tag bounds a mailbox scan (planners otherwise
        pick by_audience and sort); for the rest every planner finds imap_uid itself."""
        return "imap_audience_uid" if "audience" in box.condition or not self.principal.is_admin else None

    def _scan(self, query: dict[str, Any], projection: dict[str, Any], box: MailboxSpec):
        cursor = self.scoped.find_summaries(query, projection).sort(UID_FIELD, ASCENDING)
        hint = self.hint(box)
        return cursor.hint(hint) if hint else cursor

    def uids(self, box: MailboxSpec, through: int, low: int = 1) -> array:
        """Every UID in the mailbox, ascending: the session's sequence-number map."""
        found = array("Q")
        cursor = self._scan(self.query(box, through, low=low), {UID_FIELD: 1, "_id": 0}, box)
        found.extend(document[UID_FIELD] for document in cursor)
        return found

    def uids_matching(self, box: MailboxSpec, through: int, condition: dict[str, Any]) -> list[int]:
        """SEARCH: the UIDs of the mailbox's messages that meet condition, in one query."""
        cursor = self._scan(self.query(box, through, [condition] if condition else None), {UID_FIELD: 1, "_id": 0},
                            box)
        return [document[UID_FIELD] for document in cursor]

    def count(self, box: MailboxSpec, through: int, extra=None) -> int:
        return self.scoped.count(self.query(box, through, extra))

    def status(self, box: MailboxSpec) -> dict[str, int]:
        validity, through = self.uidvalidity()
        messages = self.count(box, through)
        seen = self.seen_uids()
        unseen = messages - (self.count(box, through, [{UID_FIELD: {"$in": seen}}]) if seen else 0)
        return {"MESSAGES": messages, "RECENT": 0, "UIDNEXT": through + 1, "UIDVALIDITY": validity,
                "UNSEEN": unseen}

    # -- messages -------------------------------------------------------------------------

    def metadata(self, uids: list[int], box: MailboxSpec, through: int) -> dict[int, dict[str, Any]]:
        """uid -> {_id, received_at, size} for these UIDs inside the mailbox (sizes computed and
        cached where missing)."""
        if not uids:
            return {}
        found = {}
        # The UIDs themselves bound the index scan (a range to `through` beside them would
        # make some planners walk the whole mailbox).
        query = {UID_FIELD: {"$in": [uid for uid in uids if uid <= through]}}
        if box.condition:
            query["$and"] = [box.condition]
        for document in self.scoped.find_summaries(query, META_FIELDS):
            size = cached_size(document)
            if size is None:
                size = rebuilt_size(self.scoped, self.archive.emails, document)
            found[document[UID_FIELD]] = {"_id": document["_id"], "received_at": document.get("received_at"),
                                          "size": size}
        return found

    def messages(self, uids: list[int], box: MailboxSpec, through: int) -> dict[int, tuple[dict[str, Any], bytes]]:
        """uid -> (metadata as metadata() gives it, the rebuilt bytes) from one query: the
        bytes exactly as GET /emails/<id>/raw serves them, from the cached skeleton when valid."""
        query = {UID_FIELD: {"$in": [uid for uid in uids if uid <= through]}}
        if box.condition:
            query["$and"] = [box.condition]
        found = {}
        for document in self.scoped.find_many(query):
            chunks, skeleton = message_chunks(self.scoped, document, REBUILD_VERSION)
            raw = b"".join(chunks)
            cached = {SKELETON_FIELD: skeleton} if skeleton is not None else {}
            if cached_size(document) != len(raw):
                cached[SIZE_FIELD] = {"v": REBUILD_VERSION, "n": len(raw)}
            if cached:
                self.archive.emails.update_one({"_id": document["_id"]}, {"$set": cached})
            found[document[UID_FIELD]] = ({"_id": document["_id"], "received_at": document.get("received_at"),
                                           "size": len(raw)}, raw)
        return found

    def message_bytes(self, email_id: ObjectId) -> bytes | None:
        """The message exactly as GET /emails/<id>/raw serves it."""
        chunks = self.scoped.rebuild(str(email_id))
        return None if chunks is None else b"".join(chunks)

    # -- \Seen ----------------------------------------------------------------------------

    def seen_uids(self) -> list[int]:
        return [entry["uid"] for entry in self.seen.find({"reader": self.reader_id}, {"uid": 1, "_id": 0})]

    def seen_among(self, uids: list[int]) -> set[int]:
        if not uids:
            return set()
        return {entry["uid"] for entry in self.seen.find({"reader": self.reader_id, "uid": {"$in": list(uids)}},
                                                         {"uid": 1, "_id": 0})}

    def mark_seen(self, entries: dict[int, ObjectId], seen: bool) -> None:
        """Set or clear \\Seen for these (uid -> message id), for this reader only."""
        for uid, email_id in entries.items():
            key = f"{self.reader_id}:{uid}"
            if seen:
                self.seen.update_one({"_id": key}, {"$setOnInsert": {
                    "reader": self.reader_id, "uid": uid, "email_id": email_id,
                    "at": datetime.now(timezone.utc)}}, upsert=True)
            else:
                self.seen.delete_one({"_id": key})


def ensure_seen_indexes(database) -> None:
    database[SEEN].create_index([("reader", ASCENDING), ("uid", ASCENDING)], name="by_reader_uid")
