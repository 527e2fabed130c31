"""Deleting messages without breaking shared attachments or bringing deleted mail back.

Order makes it safe without transactions:
1. a tombstone of the idempotency key is written (durably) first;
2. the message document is deleted (unless it is on hold);
3. each blob it referenced is deleted if no message references it (the `blob_ids` index)
   and no ingest reused it within IN_FLIGHT_GRACE (BlobStore.reuse stamps metadata.lastUsed
   before that ingest's message is inserted); a blob spared that way and never referenced
   again is removed later by the orphan sweep.
Two deletes at once: both write the same tombstone, one deletes the document, and a blob is
removed by whichever finds it unreferenced (or, if each still saw the other's message, by
the orphan sweep). An ingest of a deleted message's retry inserts and then meets the
tombstone (written before the document went, so it is always there to meet) and removes
what it inserted: see Deleter.bury_if_deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from bson import ObjectId
from pymongo import UpdateOne

from . import blobrefs
from .audience import UNRESTRICTED
from .changes import note_change
from .db import DURABLE, TOMBSTONES

# Longer than any ingest takes from reusing a blob to inserting its message.
IN_FLIGHT_GRACE = timedelta(hours=1)
NOT_HELD = {"hold": {"$ne": True}}
DELETION_FIELDS = {"idempotency_key": 1, blobrefs.FIELD: 1, "hold": 1, "received_at": 1, "subject": 1,
                    "from_email": 1}


class MessageOnHold(Exception):
    """The message is on hold (PATCH {"hold": true}); release it before deleting it."""


class Deleter:
    """Deletes messages with their unshared blobs, leaving tombstones of their keys."""

    def __init__(self, archive, tombstone_period: timedelta):
        self.archive = archive
        self.emails = archive.durable_emails
        self.tombstones = archive.database.get_collection(TOMBSTONES, write_concern=DURABLE)
        self.tombstone_period = tombstone_period
        self._blob_refs_complete = False

    def delete(self, email_id: str, within: Mapping[str, Any] = UNRESTRICTED) -> bool:
        """Delete one message; False when there is no such message, it is outside `within`
        (a visibility filter), or it was just deleted by someone else. Raises MessageOnHold
        for a held message."""
        if not ObjectId.is_valid(email_id):
            return False
        document = self.emails.find_one({"_id": ObjectId(email_id), **within}, DELETION_FIELDS)
        if document is None:
            return False
        if document.get("hold"):
            raise MessageOnHold()
        self._bury([document])
        if not self.emails.delete_one({"_id": document["_id"], **NOT_HELD}).deleted_count:
            if self.emails.count_documents({"_id": document["_id"]}, limit=1):
                raise MessageOnHold()  # put on hold since we read it
            return False  # a concurrent delete won
        note_change(self.archive.database)
        self.release_blobs(document.get(blobrefs.FIELD) or ())
        return True

    def delete_documents(self, documents: list[dict[str, Any]], *, tombstones: bool = True) -> list[ObjectId]:
        """Delete a batch of message documents (as read with DELETION_FIELDS) unless held
        meanwhile, in one round trip; returns the ids now gone (a concurrent delete may have
        removed some). Retention passes tombstones=False: mail that old is not retried or
        replayed, and a million tombstones would only cost space."""
        if not documents:
            return []
        ids = [document["_id"] for document in documents]
        if tombstones:
            self._bury(documents)
        self.emails.delete_many({"_id": {"$in": ids}, **NOT_HELD})
        note_change(self.archive.database)
        remaining = {document["_id"] for document in self.emails.find({"_id": {"$in": ids}}, {"_id": 1})}
        self.release_blobs(blob for document in documents for blob in document.get(blobrefs.FIELD) or ())
        return [email_id for email_id in ids if email_id not in remaining]

    def _bury(self, documents: list[dict[str, Any]]) -> None:
        now = datetime.now(timezone.utc)
        writes = [({"_id": document["idempotency_key"]},
                   {"$set": {"email_id": document["_id"], "deleted_at": now},
                    "$max": {"expires_at": now + self.tombstone_period}})
                  for document in documents if document.get("idempotency_key")]
        if len(writes) == 1:
            # One round trip either way; a lone update also runs on mongomock, whose
            # bulk_write cannot take pymongo 4.20's UpdateOne.
            self.tombstones.update_one(*writes[0], upsert=True)
        elif writes:
            self.tombstones.bulk_write([UpdateOne(*write, upsert=True) for write in writes], ordered=False)

    def release_blobs(self, blob_ids: Iterable[ObjectId]) -> int:
        """Delete those of these blobs no message references and no ingest just reused.

        While some older message still lacks `blob_ids` (the backfill has not finished),
        its references are invisible, so nothing is released: the orphan sweep does it later.
        """
        candidates = list(dict.fromkeys(blob_ids))
        if not candidates or not self._all_blob_refs_known():
            return 0
        return self.archive.release_unreferenced(candidates, datetime.now(timezone.utc) - IN_FLIGHT_GRACE)

    def _all_blob_refs_known(self) -> bool:
        if not self._blob_refs_complete:
            self._blob_refs_complete = blobrefs.unmigrated_count(self.archive.emails) == 0
        return self._blob_refs_complete

    def bury_if_deleted(self, key: str, email_id: ObjectId) -> str | None:
        """Called by ingest right after it inserted a message: if the key has a live
        tombstone, remove the insert again and return the deleted message's id.

        Checking after the insert (one point read of a small collection) rather than before
        is what makes it race-free: a delete writes its tombstone before it deletes the
        document that would otherwise have made this insert a duplicate.
        """
        now = datetime.now(timezone.utc)  # expiry compared here, not left to TTL timing
        tombstone = self.tombstones.find_one({"_id": key, "expires_at": {"$gt": now}}, {"email_id": 1})
        if tombstone is None:
            return None
        inserted = self.emails.find_one_and_delete({"_id": email_id}, projection={blobrefs.FIELD: 1})
        if inserted:
            self.release_blobs(inserted.get(blobrefs.FIELD) or ())
        return str(tombstone["email_id"])
