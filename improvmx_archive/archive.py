"""The archive: store a message exactly once, and read messages and their parts back.

Order of writes is what keeps the archive consistent: part bytes go to GridFS first, the
message document last and durably, guarded by a unique idempotency key. A crash in between
leaves only unreferenced blobs, which a retry reuses and gc_blobs removes.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator, Mapping
from typing import Any

import bson
from bson import Binary, ObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    ProtocolError,
    PyMongoError,
    WriteConcernError,
)

from . import blobrefs
from . import audience
from . import threads
from . import delivered
from .audience import UNRESTRICTED
from .db import ACKNOWLEDGED, DURABLE, DatabaseUnavailable, create_indexes
from .deletion import Deleter
from .indexer import SEARCH_ONLY_FIELDS, Vocabulary, pending_marker
from .listing import CursorCodec, Filters, Page, up_to
from .notify import mark_for_notification
from .parts import (
    INLINE_DATA, INLINE_PART_LIMIT, INLINE_TOTAL_LIMIT, BlobStore, BlobStream, Decoded, decoded_once, inline_stream, inspect_part,
)
from .payload import (
    Message, Part, accepts_domains, escape_keys, idempotency_key, normalise, replace_lone_surrogates,
    unescape_keys,
)
from .query import MAX_PREFIX_EXPANSION, compile_search

log = logging.getLogger(__name__)

# Errors that mean "MongoDB cannot take this write now", as opposed to a bug or bad data.
# ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError, server selection
# and pool timeouts; WriteConcernError covers WTimeoutError.
UNAVAILABLE_ERRORS = (ConnectionFailure, ProtocolError, ExecutionTimeout, WriteConcernError)
# Server error codes and labels of the retryable-writes spec: shutting down, stepping down,
# unreachable, overloaded. They reach us as a plain OperationFailure or WriteError (GridFS
# turns a failed chunk insert_many into one) once pymongo's own single retry has failed.
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436})
TRANSIENT_LABELS = ("RetryableWriteError", "RetryableError", "SystemOverloadedError")
BODY_INLINE_LIMIT = 1024 * 1024  # larger text/html bodies go to GridFS
DOCUMENT_LIMIT = 15 * 1024 * 1024  # stay clear of MongoDB's 16 MB document cap
SENT_SOURCE = "sent"  # a copy of mail sent from the archive (outbound/)
GC_BATCH = 500  # candidate blobs checked per query of the blob_ids index
DEFAULT_TOMBSTONE_PERIOD = timedelta(days=7)
SUMMARY_EXCLUDE = {"text": 0, "html": 0, "headers": 0, "overflow": 0, "bodies": 0, "blob_ids": 0,
                   f"attachments.{INLINE_DATA}": 0, f"inlines.{INLINE_DATA}": 0,
                   "tokens": 0, "search": 0, "subject_trigrams": 0, "audience": 0,
                   "imap_uid": 0, "imap_size": 0, "imap_skeleton": 0}


def _database_unavailable(error: PyMongoError) -> bool:
    if isinstance(error, UNAVAILABLE_ERRORS):
        return True
    return isinstance(error, OperationFailure) and (
        error.code in TRANSIENT_CODES or any(error.has_error_label(label) for label in TRANSIENT_LABELS)
    )


class RecipientNotAccepted(Exception):
    """No recipient of the message is in a domain this archive listens for (DOMINIO)."""


def index_hint(query: dict[str, Any]) -> str | None:
    """Searches name their index: next to the residual conditions (regexes, negations) some
    planners (SecantusDB's) fall back to a collection scan. A top-level `tokens` condition
    is always the `q` driver (Archive.filter_for puts every other token condition in $and)."""
    if "tokens" in query:
        # A bare word (on a cursor page: plus a received_at bound) needs no hint: every
        # planner takes the token index for it, while SecantusDB reads the whole collection
        # for any hint on a multikey index.
        return "by_token" if set(query) - {"tokens", "received_at"} else None
    if "subject_trigrams" in query:
        return "by_subject_trigram"
    if "subject_lower" in query:
        return "newest_first"
    return None


@dataclass
class IngestResult:
    email_id: str
    duplicate: bool
    deleted: bool = False  # a retry of a deleted message: not stored again (deletion.py)


def _part_record(part: Part, decoded: Decoded, *, blob_id: ObjectId | None = None) -> dict[str, Any]:
    """What the message document says about one part: its bytes are in the record itself
    (INLINE_DATA) when blob_id is None, else in that GridFS blob."""
    record = {
        "index": part.index,
        "name": part.name,
        "type": part.content_type,
        "size": decoded.size,
        "sha256": decoded.sha256,
        "stored_as": decoded.mode,
    }
    if blob_id is None:
        record[INLINE_DATA] = Binary(decoded.data)
    else:
        record["blob_id"] = blob_id
    for key, value in escape_keys({k: v for k, v in part.raw.items() if k not in ("content", "name", "type")}).items():
        record.setdefault(key, value)
    if decoded.flags:
        record["flags"] = decoded.flags
    return record


def _kept_inline(decoded: list[Decoded]) -> list[bool]:
    """Which parts stay in the message document: small ones, up to a total per message."""
    total = 0
    placement = []
    for info in decoded:
        inline = info.data is not None and info.size <= INLINE_PART_LIMIT and total + info.size <= INLINE_TOTAL_LIMIT
        total += info.size if inline else 0
        placement.append(inline)
    return placement


class Archive:
    """All reads and writes of messages; one per app, shared by threads."""

    def __init__(self, database, *, announce_new_mail: bool = False,
                 tombstone_period: timedelta = DEFAULT_TOMBSTONE_PERIOD):
        self.database = database
        self.announce_new_mail = announce_new_mail  # NOTIFY_URL is set: mark new mail for notify.py
        self.emails = database.emails
        self.durable_emails = database.get_collection("emails", write_concern=DURABLE)
        self.blobs = BlobStore(database, write_concern=ACKNOWLEDGED)
        self.vocabulary = Vocabulary(database)
        self.deleter = Deleter(self, tombstone_period)
        self._indexes_ready = False
        self._cursors: CursorCodec | None = None

    def ensure_indexes(self) -> None:
        """Create the indexes once per process. The unique idempotency index must exist
        before the first insert, or concurrent deliveries of one message could both land;
        start-up skips it while MongoDB is down, so the first ingest or replay retries it."""
        if not self._indexes_ready:
            create_indexes(self.database)
            self._indexes_ready = True

    def ingest(self, payload: dict[str, Any], *, email_id: ObjectId | None = None,
               domains: tuple[str, ...] = (), received_at: datetime | None = None,
               source: str = "webhook", sent_by: str | None = None) -> IngestResult:
        """Store one payload (idempotently) and return its id.

        `received_at` (default now) and `source` say when and how the message reached the
        archive: an import keeps an old message's own date so listings and retention see it as old.
        A sent copy (`source="sent"`, outbound/) is seen by its From alias's people and by
        `sent_by`, the person who sent it, and announces no new mail.

        Raises RecipientNotAccepted when `domains` is set and no recipient is in them, and
        DatabaseUnavailable when MongoDB cannot take the write, so the caller can spool the
        message or answer 503 for ImprovMX to retry.
        """
        message = normalise(payload)
        message.derived.update(received_at=received_at or datetime.now(timezone.utc), source=source)
        if source == SENT_SOURCE:
            message.derived[audience.FIELD] = audience.audience_of(
                [message.derived["from_email"], *message.derived["recipients"]], sent_by=sent_by)
        if not accepts_domains(message, domains):
            raise RecipientNotAccepted()
        try:
            return self._ingest(message, email_id or ObjectId())
        except PyMongoError as error:
            if not _database_unavailable(error):
                raise
            raise DatabaseUnavailable(type(error).__name__) from error

    def _ingest(self, message: Message, email_id: ObjectId) -> IngestResult:
        """One durable insert for a typical message: small parts ride in the document and the
        unique index alone catches a retry. Only parts bound for GridFS make it worth asking
        first whether this delivery is already stored (a retry would upload them again)."""
        self.ensure_indexes()
        decoded = [inspect_part(part, keep) for part, keep in zip(message.parts, decoded_once(message.parts))]
        key = idempotency_key(message, [d.sha256 for d in decoded])
        inline = _kept_inline(decoded)
        if not all(inline):
            existing = self.emails.find_one({"idempotency_key": key}, {"_id": 1})
            if existing:
                return IngestResult(str(existing["_id"]), True)
        blob_ids = self._store_blobs([(part, info) for part, info, keep in zip(message.parts, decoded, inline)
                                      if not keep])
        records: dict[str, list] = {"attachments": [], "inlines": []}
        for part, info, keep in zip(message.parts, decoded, inline):
            records[part.kind].append(_part_record(part, info, blob_id=None if keep else blob_ids.pop(0)))

        document, encoded_size = self._document(message, records, key, email_id)
        if encoded_size > DOCUMENT_LIMIT:
            document = self._fit(document, message, decoded)
        document[blobrefs.FIELD] = blobrefs.referenced_blobs(document)
        if self.announce_new_mail and message.derived["source"] != SENT_SOURCE:
            mark_for_notification(document)
        try:
            self.durable_emails.insert_one(document)
        except DuplicateKeyError:
            existing = self.emails.find_one({"idempotency_key": key}, {"_id": 1})
            if existing is None:
                raise
            return IngestResult(str(existing["_id"]), True)
        if deleted_as := self.deleter.bury_if_deleted(key, email_id):
            return IngestResult(deleted_as, False, deleted=True)
        return IngestResult(str(email_id), False)

    def _store_blobs(self, parts: list[tuple[Part, Decoded]]) -> list[ObjectId]:
        """GridFS blobs for these parts, in order: identical stored ones found in one batched
        lookup, new ones already decoded written together in batches, the largest streamed
        one at a time. The number of round trips grows with the bytes, not with the number
        of parts."""
        if not parts:
            return []
        found = self.blobs.reuse_many([(info.sha256, info.size) for _, info in parts])
        decoded_new: dict[tuple[str, int], tuple[bytes, str, str]] = {}
        for part, info in parts:
            wanted = (info.sha256, info.size)
            if wanted in found:
                continue
            if info.data is not None:
                decoded_new.setdefault(wanted, (info.data, info.sha256, part.content_type))
            else:
                found[wanted] = self.blobs.put_new(info.slices(part.content), info.sha256, part.content_type)
        found.update(zip(decoded_new, self.blobs.put_many(list(decoded_new.values()))))
        return [found[(info.sha256, info.size)] for _, info in parts]

    def _fit(self, document: dict[str, Any], message: Message, decoded: list[Decoded]) -> dict[str, Any]:
        """Make a document over DOCUMENT_LIMIT fit: inline parts move to GridFS, then headers
        and unknown fields to an overflow blob."""
        inline = [(part, info) for part, info in zip(message.parts, decoded)
                  if INLINE_DATA in document[part.kind][part.index]]
        if inline:
            for (part, info), blob_id in zip(inline, self._store_blobs(inline)):
                record = document[part.kind][part.index]
                del record[INLINE_DATA]
                record["blob_id"] = blob_id
            if len(bson.encode(document)) <= DOCUMENT_LIMIT:
                return document
        return self._overflow(document)

    def _document(self, message: Message, records: dict[str, list], key: str,
                  email_id: ObjectId) -> tuple[dict[str, Any], int]:
        """The message document and its encoded size."""
        fields = dict(message.fields)
        bodies = {}
        for body in ("text", "html"):
            value = fields.get(body)
            if isinstance(value, str) and len(value) > BODY_INLINE_LIMIT:
                bodies[body] = self._store_text(value, "text/plain" if body == "text" else "text/html")
                fields[body] = None
        flags = list(message.flags)
        flags += [f"{record['type']}:{flag}" for kind in records.values() for record in kind
                  for flag in record.get("flags", [])]
        size = sum(r["size"] for kind in records.values() for r in kind) + sum(
            len(fields[b]) for b in ("text", "html") if isinstance(fields.get(b), str)
        ) + sum(b["size"] for b in bodies.values())
        document = {
            "_id": email_id,
            **escape_keys(fields),
            "attachments": records["attachments"],
            "inlines": records["inlines"],
            "extra": escape_keys(message.extra),
            **message.derived,
            "idempotency_key": key,
            "processed": False,
            "size": size,
            "attachment_count": len(records["attachments"]),
            "has_attachments": bool(records["attachments"]),
            "flags": flags,
            **pending_marker(),
        }
        if bodies:
            document["bodies"] = bodies
        try:
            encoded_size = len(bson.encode(document))
        except UnicodeEncodeError:
            document = replace_lone_surrogates(document)
            document["flags"].append("lone_surrogates_replaced")
            encoded_size = len(bson.encode(document))
        return document, encoded_size

    def _store_text(self, value: str, content_type: str) -> dict[str, Any]:
        part = Part("body", 0, {"content": value, "type": content_type})
        info = inspect_part(part)
        blob_id = self.blobs.put(info.slices(value), info.sha256, info.size, content_type)
        return {"blob_id": blob_id, "sha256": info.sha256, "size": info.size}

    def _overflow(self, document: dict[str, Any]) -> dict[str, Any]:
        """Move headers and unknown fields to GridFS when they alone would break 16 MB."""
        spilled = {key: document.pop(key) for key in ("headers", "extra") if key in document}
        encoded = json.dumps(spilled, default=str)
        document["overflow"] = self._store_text(encoded, "application/json")
        document["flags"].append("overflow")
        return document

    def find(self, email_id: str, within: Mapping[str, Any] = UNRESTRICTED) -> dict[str, Any] | None:
        """One whole message with bodies restored, or None for an unknown or malformed id or
        one outside `within` (a visibility filter: the same query either way)."""
        if not ObjectId.is_valid(email_id):
            return None
        document = self.emails.find_one({"_id": ObjectId(email_id), **within})
        if document is None:
            return None
        return self._whole(document)

    def find_many(self, query: Mapping[str, Any], within: Mapping[str, Any] = UNRESTRICTED) -> Iterator[dict[str, Any]]:
        """Every whole message matching query (inside `within`), as find() returns each, from
        one query (the IMAP view fetches pipelined messages this way), without the search
        index's fields, a few KB a message that a reader never needs."""
        for document in self.emails.find({**query, **within}, {field: 0 for field in SEARCH_ONLY_FIELDS}):
            yield self._whole(document)

    def _whole(self, document: dict[str, Any]) -> dict[str, Any]:
        """A stored document with its spilled bodies and overflow read back."""
        for body, info in document.pop("bodies", {}).items():
            document[body] = self.read_text(info["blob_id"])
        overflow = document.pop("overflow", None)
        if overflow:
            document.update(json.loads(self.read_text(overflow["blob_id"]) or "{}"))
        return unescape_keys(document)

    def read_text(self, blob_id: ObjectId) -> str | None:
        stream = self.blobs.stream(blob_id)
        return b"".join(stream.chunks).decode("utf-8", "surrogatepass") if stream else None

    def page_cursor(self, query: dict[str, Any], skip: int, limit: int):
        """Summaries matching query, newest first, through the index index_hint picks."""
        cursor = (
            self.emails.find(query, SUMMARY_EXCLUDE)
            .sort([("received_at", DESCENDING), ("_id", DESCENDING)])
            .skip(skip)
            .limit(limit)
        )
        hint = index_hint(query)
        return cursor.hint(hint) if hint else cursor

    def _count(self, query: dict[str, Any]) -> int:
        if not query:
            return self.emails.estimated_document_count()
        hint = index_hint(query)
        return self.emails.count_documents(query, hint=hint) if hint else self.emails.count_documents(query)

    def filter_for(self, filters: Filters, within: Mapping[str, Any] = UNRESTRICTED) -> dict[str, Any]:
        """The MongoDB filter of a listing: the plain parameters and the visibility filter
        `within`, the `q` driver as the one top-level `tokens` condition, every other search
        condition under $and."""
        query = {**filters.query, **within}
        if filters.search is None:
            return query
        compiled = compile_search(filters.search, lambda prefix: self.vocabulary.expand(prefix, MAX_PREFIX_EXPANSION))
        if compiled.driver:
            query.update(compiled.driver)
        extra = []
        for clause in compiled.residual:
            key = next(iter(clause)) if len(clause) == 1 else None
            if key and not key.startswith("$") and key != "tokens" and key not in query:
                query[key] = clause[key]
            else:
                extra.append(clause)
        if extra:
            query["$and"] = extra
        return query

    def list_page(self, filters: Filters, cursor: str | None = None, limit: int = 10,
                  count: bool = True, skip: int = 0, within: Mapping[str, Any] = UNRESTRICTED) -> Page:
        """One page of summaries, newest first, from the position a cursor names (from the
        top without one), and the cursor of the page after it. `count=False` skips counting
        every match, which costs more than the page for broad searches. Raises QueryError
        (400) for a cursor that is not one of this archive's for these filters."""
        if self._cursors is None:
            self._cursors = CursorCodec.from_database(self.database)
        query = self.filter_for(filters, within)
        if cursor:
            received_at, email_id = self._cursors.decode(filters.fingerprint, cursor)
            # Messages received in the cursor's millisecond and already shown are fetched
            # too and dropped here; there are rarely any, and counting them is one index probe.
            shown = self.emails.count_documents({"received_at": received_at, "_id": {"$gte": email_id}})
            fetched = self.page_cursor(up_to(query, received_at), 0, skip + limit + 1 + shown)
            after = [doc for doc in fetched if doc["received_at"] != received_at or doc["_id"] < email_id]
            documents = after[skip:skip + limit + 1]
        else:
            documents = list(self.page_cursor(query, skip, limit + 1))
        following = None
        if len(documents) > limit:
            documents = documents[:limit]
            last = documents[-1]
            following = self._cursors.encode(filters.fingerprint, last["received_at"], last["_id"])
        total = self._count(query) if count else None
        return Page([unescape_keys(doc) for doc in documents], following, total)

    def set_processed(self, email_id: str, processed: bool,
                      within: Mapping[str, Any] = UNRESTRICTED) -> dict[str, Any] | None:
        if not ObjectId.is_valid(email_id):
            return None
        return self.durable_emails.find_one_and_update(
            {"_id": ObjectId(email_id), **within},
            {"$set": {"processed": processed,
                      "processed_at": datetime.now(timezone.utc) if processed else None}},
            projection={"_id": 1, "processed": 1, "processed_at": 1},
            return_document=ReturnDocument.AFTER,
        )

    def part(self, email_id: str, *, name: str | None = None, position: int | None = None,
             within: Mapping[str, Any] = UNRESTRICTED):
        """A part's record and its BlobStream, by file name or by 0-based position.

        Attachments come first, then inlines; a name matches an attachment or inline name or
        an inline's Content-ID.
        """
        if not ObjectId.is_valid(email_id):
            return None, None
        document = self.emails.find_one({"_id": ObjectId(email_id), **within}, {"attachments": 1, "inlines": 1})
        if document is None:
            return None, None
        parts = list(document.get("attachments") or []) + list(document.get("inlines") or [])
        if position is not None:
            record = parts[position] if 0 <= position < len(parts) else None
        else:
            record = next((p for p in parts if p.get("name") == name), None) or next(
                (p for p in parts if p.get("cid") == name), None
            )
        if record is None:
            return None, None
        return record, self.part_stream(record)

    def part_stream(self, record: dict[str, Any]) -> BlobStream | None:
        """A part's bytes (length and chunks) from its record, wherever they are kept:
        inline in the message document or in GridFS. None when the blob is gone."""
        if record.get(INLINE_DATA) is not None:
            return inline_stream(record[INLINE_DATA])
        return self.blobs.stream(record["blob_id"])

    def migrate_blob_refs(self, progress=None) -> int:
        """Give documents stored before `blob_ids` existed their array; returns how many."""
        return blobrefs.backfill(self.emails, progress)

    def migrate_threads(self, progress=None) -> int:
        """Give documents stored before `thread_refs` existed their conversation links."""
        return threads.backfill(self.emails, progress)

    def migrate_audience(self, progress=None) -> int:
        """Give documents stored before `audience` existed their tags; returns how many."""
        return audience.backfill(self.emails, progress)

    def migrate_delivered_to(self, progress=None) -> int:
        """Give documents stored before `delivered_to` existed their addresses; returns how many."""
        return delivered.backfill(self.emails, progress)

    def gc_blobs(self, grace: timedelta = timedelta(hours=1)) -> int:
        """Delete blobs no message references, older than the grace period (in-flight
        ingests write blobs before their message). Returns how many were removed.

        Documents from before `blob_ids` existed are given it first; while any is left
        (a backfill that failed part-way) nothing is collected, since such a document's
        blobs would look unreferenced.
        """
        self.migrate_blob_refs()
        if blobrefs.unmigrated_count(self.emails):
            log.warning("orphan collection skipped: some messages still lack blob_ids")
            return 0
        cutoff = datetime.now(timezone.utc) - grace
        removed = 0
        candidates = self.database["blobs.files"].find({"uploadDate": {"$lt": cutoff}}, {"_id": 1})
        while batch := [blob["_id"] for blob in itertools.islice(candidates, GC_BATCH)]:
            removed += self.release_unreferenced(batch, cutoff)
        return removed

    def release_unreferenced(self, blob_ids: list[ObjectId], cutoff: datetime) -> int:
        """Delete those of these blobs no message references (one query of the blob_ids
        index for the lot) and no ingest reused since cutoff; returns how many went. Callers
        make sure every message has its blob_ids first."""
        referenced = blobrefs.still_referenced(self.emails, blob_ids)
        return sum(self.blobs.delete_if_unused(blob_id, cutoff) for blob_id in blob_ids if blob_id not in referenced)
