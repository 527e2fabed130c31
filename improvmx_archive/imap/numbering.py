"""IMAP UIDs: one global counter numbers every message, in the background, off the webhook.

A message gets `imap_uid` from the numbering pass (one holder at a time across hosts, under
a lease), never at ingest: the webhook's insert stays what it was. The pass finds messages
without a UID through the `imap_uid` index (a missing field is indexed as null), reserves
a block of the counter first (an atomic $inc, so a crash leaves a gap, never a reused UID),
writes the UIDs in ascending order, and only then raises `visible_through`. Sessions show
only messages with `imap_uid <= visible_through`, so a client never sees UID n+1 before n
exists: UIDs are strictly ascending in every mailbox, stable across reconnects, restarts
and hosts, and new mail (imports with old dates too) always gets a higher UID. Gaps are
allowed (RFC 3501 2.3.1.1), so one counter serves every mailbox and every person.

`uidvalidity` is fixed when the state document is created; it changes only if the
numbering itself is rebuilt (the state removed), which clients answer with a full resync.

The pass also records the archive's aliases (`imap_aliases`), which become mailboxes, and
the byte size of each rebuilt message (`imap_size`, tagged with the rebuild's version) so
that RFC822.SIZE never rebuilds a message twice, and its skeleton (`imap_skeleton`,
imap/skeletons.py) so that BODY[] does not rebuild it either.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from .. import mailio
from ..db import DURABLE
from ..lease import Lease
from .skeletons import SKELETON_FIELD, message_chunks

log = logging.getLogger(__name__)

UID_FIELD = "imap_uid"
SIZE_FIELD = "imap_size"
STATE = "imap_state"
ALIASES = "imap_aliases"
STATE_ID = "numbering"
NUMBERING_LEASE = "imap-numbering"
LEASE_DURATION = timedelta(seconds=60)
BATCH = 500
PASS_SECONDS = 10.0
IMAP_INDEXES = [
    # Unnumbered messages (uid missing: a null key) and every UID range of INBOX (admins).
    IndexModel([(UID_FIELD, ASCENDING)], name="imap_uid"),
    # A member's INBOX and every alias mailbox: audience tag, then the UID range (a scalar).
    IndexModel([("audience", ASCENDING), (UID_FIELD, ASCENDING)], name="imap_audience_uid"),
]
SENT_SOURCE = "sent"


def _rebuild_version() -> str:
    """Changes whenever the rebuild's code (mailio.py) or the email package's version does, so
    a cached size never outlives the bytes it measured."""
    source = inspect.getsource(mailio).encode()
    return hashlib.sha256(source + sys.version.split()[0].encode()).hexdigest()[:16]


REBUILD_VERSION = _rebuild_version()


def ensure_indexes(database) -> None:
    database.emails.create_indexes(IMAP_INDEXES)


def numbering_state(database) -> dict[str, Any]:
    """The counter's state, created on first use: uidvalidity, next_uid, visible_through.

    Created again after a loss (a restore without it), it continues above the highest UID
    any message carries, never reusing one, under a new UIDVALIDITY (clients resync once)."""
    state = database[STATE].find_one({"_id": STATE_ID})
    if state is not None:
        return state
    top = database.emails.find_one({UID_FIELD: {"$gte": 1}}, {UID_FIELD: 1}, sort=[(UID_FIELD, -1)])
    highest = top[UID_FIELD] if top else 0
    try:
        database.get_collection(STATE, write_concern=DURABLE).insert_one(
            {"_id": STATE_ID, "uidvalidity": int(time.time()) & 0xFFFFFFFF or 1, "next_uid": highest + 1,
             "visible_through": highest})
    except DuplicateKeyError:
        pass  # another host created it first
    return database[STATE].find_one({"_id": STATE_ID})


def cached_size(document: dict[str, Any]) -> int | None:
    cached = document.get(SIZE_FIELD)
    if isinstance(cached, dict) and cached.get("v") == REBUILD_VERSION and isinstance(cached.get("n"), int):
        return cached["n"]
    return None


def rebuilt_size(archive, emails, document: dict[str, Any]) -> int:
    """The byte length of the message's rebuild (streamed, never held whole), cached on the
    document with the rebuild's skeleton (imap/skeletons.py), so a FETCH never rebuilds it.
    `archive` reads the message (a ScopedArchive in a session)."""
    whole = archive.find(str(document["_id"]))
    if whole is None:
        return 0
    chunks, skeleton = message_chunks(archive, whole, REBUILD_VERSION)
    size = sum(len(chunk) for chunk in chunks)
    cached = {SIZE_FIELD: {"v": REBUILD_VERSION, "n": size}}
    if skeleton is not None:
        cached[SKELETON_FIELD] = skeleton
    emails.update_one({"_id": document["_id"]}, {"$set": cached})
    return size


class Numbering:
    """The numbering pass: UIDs for new messages, the alias registry, cached sizes."""

    def __init__(self, archive, domains: tuple[str, ...] = ()):
        self.archive = archive
        self.database = archive.database
        self.emails = archive.emails
        self.state = archive.database.get_collection(STATE, write_concern=DURABLE)
        self.lease = Lease(archive.database, NUMBERING_LEASE)
        self.domains = tuple(domains)
        self._known_aliases: set[str] = set()

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """One pass under the lease (skipped while another host holds it); returns how many
        messages were numbered."""
        if not self.lease.acquire(LEASE_DURATION):
            return 0
        try:
            deadline = time.monotonic() + PASS_SECONDS
            return self.number_pending(lambda: should_stop() or time.monotonic() >= deadline)
        finally:
            self.lease.release()

    def number_pending(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Number every message without a UID, oldest first (by arrival, then id), in blocks."""
        numbering_state(self.database)
        numbered = 0
        unnumbered = (self.emails.find({UID_FIELD: None}, {"_id": 1, "recipients": 1, SIZE_FIELD: 1})
                      .hint("imap_uid").sort([("received_at", ASCENDING), ("_id", ASCENDING)]))
        batch: list[dict[str, Any]] = []
        for document in unnumbered:
            batch.append(document)
            if len(batch) >= BATCH:
                numbered += self._number(batch)
                batch = []
                if should_stop():
                    break
        else:
            if batch:
                numbered += self._number(batch)
        unnumbered.close()
        return numbered

    def _number(self, batch: list[dict[str, Any]]) -> int:
        """Reserve len(batch) UIDs, write them in ascending order, then publish them."""
        reserved = self.state.find_one_and_update({"_id": STATE_ID}, {"$inc": {"next_uid": len(batch)}},
                                                  return_document=ReturnDocument.BEFORE)
        first = reserved["next_uid"]
        numbered = 0
        for offset, document in enumerate(batch):  # one at a time, ascending: never n+1 before n
            numbered += self.emails.update_one({"_id": document["_id"], UID_FIELD: None},
                                               {"$set": {UID_FIELD: first + offset}}).modified_count
        # Durable (journaled, majority): on its way it makes the acknowledged UID writes durable too.
        self.state.update_one({"_id": STATE_ID}, {"$max": {"visible_through": first + len(batch) - 1}})
        self._register_aliases(batch)
        for document in batch:
            if cached_size(document) is None:
                try:
                    rebuilt_size(self.archive, self.emails, document)
                except Exception:  # noqa: BLE001 - FETCH computes it later; numbering goes on
                    log.exception("imap: size of message %s not computed", document["_id"])
        return numbered

    def _register_aliases(self, batch: list[dict[str, Any]]) -> None:
        """The archive's own addresses (in DOMINIO when set) among these recipients."""
        new = set()
        for document in batch:
            for address in document.get("recipients") or ():
                if not isinstance(address, str) or "@" not in address:
                    continue
                address = address.strip().lower()
                if self.domains and address.rsplit("@", 1)[1] not in self.domains:
                    continue
                if address not in self._known_aliases:
                    new.add(address)
        for address in sorted(new):
            self.database[ALIASES].update_one({"_id": address}, {"$setOnInsert": {"_id": address}}, upsert=True)
        self._known_aliases |= new


def known_aliases(database) -> list[str]:
    return sorted(entry["_id"] for entry in database[ALIASES].find({}, {"_id": 1}))
