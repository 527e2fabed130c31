"""Attachment and inline bytes: decoded in slices and kept once per SHA-256 in GridFS.

The GridFS layout (files + chunks) is written and read here directly, so any GridFS tool
can read the bucket while memory stays bounded by a few chunks either way.

A 40 MB attachment arrives as ~54 MB of base64 text; decoding it slice by slice keeps memory
flat, and storing by digest means a newsletter's logo is kept once however often it comes.
Content that claims base64 but does not decode is stored exactly as received and flagged.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from bson import Binary, ObjectId
from pymongo.errors import BulkWriteError, PyMongoError, WriteConcernError

from .body import SpilledString
from .payload import Part

SLICE_CHARS = 1024 * 1024  # base64 characters decoded at a time: a few MB of working memory
CHUNK_BYTES = 1024 * 1024 - 1024  # GridFS chunk size: few round trips, well under 16 MB
UPLOAD_BATCH_CHUNKS = 4  # chunks sent per insert: bounds upload memory to a few MB
BASE64_WHITESPACE = b" \t\r\n\x0b\x0c"  # what MIME line-wrapping and mailparse leave in base64

# Parts up to this many decoded bytes live in the message document (one write for a typical
# message); larger ones go to GridFS, kept once per SHA-256. Measured in BENCHMARKS.md.
INLINE_PART_LIMIT = 256 * 1024
# All inline parts of one message together, well under the 16 MB document cap.
INLINE_TOTAL_LIMIT = 6 * 1024 * 1024
# Parts whose received (base64 or text) form is at most this long keep their decoded bytes
# while they are hashed, so they are decoded once; larger ones are decoded again while they
# are written, a slice at a time, so memory stays bounded by a few MB.
KEEP_RECEIVED_LIMIT = 6 * 1024 * 1024
# ...and at most this much received content per message is kept that way, not counting
# parts small enough to be inline candidates (always kept: batched writes need their bytes).
KEEP_RECEIVED_BUDGET = 12 * 1024 * 1024
_INLINE_RECEIVED = INLINE_PART_LIMIT * 4 // 3 + INLINE_PART_LIMIT // 16  # base64 with line breaks
LOOKUP_BATCH = 2000  # digests per query when looking for stored blobs
WRITE_BATCH_BYTES = 8 * 1024 * 1024  # chunk bytes per insert_many when writing many small blobs

MODE_BASE64 = "base64"
MODE_TEXT = "text"
MODE_RAW = "raw"


class InvalidBase64(ValueError):
    """The content claimed base64 but is not valid base64."""


def _base64_slices(source: Iterator[bytes]) -> Iterator[bytes]:
    """Decoded bytes of base64 text given as byte slices, strictly validated, a slice at a
    time. Line breaks are dropped with bytes.translate, which runs ~10x faster than a regex."""
    carry = b""
    seen_any = False
    for chunk in source:
        piece = carry + chunk.translate(None, BASE64_WHITESPACE)
        usable = len(piece) - len(piece) % 4
        carry = piece[usable:]
        if usable:
            seen_any = True
            try:
                yield binascii.a2b_base64(piece[:usable], strict_mode=True)
            except (binascii.Error, ValueError):
                raise InvalidBase64() from None
    if carry or not seen_any:
        raise InvalidBase64()


def _text_slices(content: str) -> Iterator[bytes]:
    """UTF-8 bytes of text, keeping lone surrogates so nothing received is altered."""
    for start in range(0, len(content), SLICE_CHARS):
        yield content[start:start + SLICE_CHARS].encode("utf-8", "surrogatepass")


def _source_slices(content: Any) -> Iterator[bytes]:
    """The content as received, as UTF-8 byte slices (a SpilledString reads its buffer)."""
    if isinstance(content, SpilledString):
        return content.slices()
    return _text_slices(_as_text(content))


@dataclass
class Decoded:
    """How a part's bytes are obtained, their digest and size, and the bytes themselves when
    the part is small enough to be kept in the message document (decoded once, here)."""

    mode: str
    sha256: str
    size: int
    flags: list[str]
    data: bytes | None = None

    def slices(self, content: Any) -> Iterator[bytes]:
        if self.data is not None:
            return iter((self.data,))
        if self.mode == MODE_BASE64:
            return _base64_slices(_source_slices(content))
        return _source_slices(content)


def _as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return json.dumps(content, sort_keys=True, default=str)


def _digest(slices: Iterator[bytes], keep: bool) -> tuple[str, int, bytes | None]:
    """SHA-256 and size of the bytes, and the bytes themselves when asked to keep them."""
    sha, size, kept = hashlib.sha256(), 0, []
    for chunk in slices:
        sha.update(chunk)
        size += len(chunk)
        if keep:
            kept.append(chunk)
    return sha.hexdigest(), size, b"".join(kept) if keep else None


def received_length(content: Any) -> int:
    return len(content) if isinstance(content, (str, SpilledString)) else 0


def decoded_once(parts: list[Part]) -> list[bool]:
    """Which parts keep their decoded bytes (see KEEP_RECEIVED_LIMIT), in order."""
    budget = KEEP_RECEIVED_BUDGET
    kept = []
    for part in parts:
        length = received_length(part.content)
        if length <= _INLINE_RECEIVED:
            kept.append(True)
            continue
        keep = length <= KEEP_RECEIVED_LIMIT and length <= budget
        budget -= length if keep else 0
        kept.append(keep)
    return kept


def inspect_part(part: Part, keep: bool = False) -> Decoded:
    """One pass over a part: decide base64 or text, validate, hash, and keep the decoded
    bytes when asked. Nothing is stored."""
    content = part.content
    flags = list(part.flags)
    if content is None:
        flags.append("content_missing")
    elif not isinstance(content, (str, SpilledString)):
        flags.append("content_not_a_string")
    elif part.expects_base64:
        try:
            sha, size, data = _digest(_base64_slices(_source_slices(content)), keep)
            return Decoded(MODE_BASE64, sha, size, flags, data)
        except InvalidBase64:
            flags.append("invalid_base64")
    mode = MODE_TEXT if isinstance(content, (str, SpilledString)) and not flags else MODE_RAW
    sha, size, data = _digest(_source_slices(content), keep)
    return Decoded(mode, sha, size, flags, data)


class CorruptBlob(Exception):
    """A blob's chunks are missing or out of sequence."""


@dataclass
class BlobStream:
    length: int
    chunks: Iterator[bytes]


# A part record's field holding the part's bytes when they are kept in the message document.
INLINE_DATA = "data"


def inline_stream(data: bytes) -> BlobStream:
    """Bytes kept in the message document, served like a blob (a chunk at a time)."""
    view = memoryview(bytes(data))
    return BlobStream(len(view), (bytes(view[i:i + CHUNK_BYTES]) for i in range(0, len(view), CHUNK_BYTES)))


def _chunks_in_order(cursor, blob_id: ObjectId) -> Iterator[bytes]:
    try:
        for expected, chunk in enumerate(cursor):
            if chunk["n"] != expected:
                raise CorruptBlob(f"blob {blob_id}: chunk {expected} missing")
            yield chunk["data"]
    finally:
        cursor.close()


class BlobStore:
    """Content-addressed GridFS storage: one file per distinct SHA-256."""

    def __init__(self, database, bucket_name: str = "blobs", write_concern=None):
        self.files = database.get_collection(f"{bucket_name}.files", write_concern=write_concern)
        self.chunks = database.get_collection(f"{bucket_name}.chunks", write_concern=write_concern)

    def reuse(self, sha256: str, size: int) -> ObjectId | None:
        """An identical stored blob, stamped as just used so that an orphan sweep which
        already judged it unreferenced leaves it alone (see delete_if_unused)."""
        found = self.files.find_one_and_update(
            {"metadata.sha256": sha256, "length": size},
            {"$set": {"metadata.lastUsed": datetime.now(timezone.utc)}},
            projection={"_id": 1},
        )
        return found["_id"] if found else None

    def reuse_many(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], ObjectId]:
        """Identical stored blobs for many (sha256, size) at once, a few round trips in all
        however many parts a message has; each found one is stamped as just used, as reuse()
        does, and one that an orphan sweep removed meanwhile is simply not returned."""
        found: dict[tuple[str, int], ObjectId] = {}
        distinct = list(dict.fromkeys(wanted))
        for start in range(0, len(distinct), LOOKUP_BATCH):
            batch = distinct[start:start + LOOKUP_BATCH]
            sizes = dict(batch)
            for entry in self.files.find({"metadata.sha256": {"$in": list(sizes)}},
                                         {"_id": 1, "length": 1, "metadata.sha256": 1}):
                key = (entry["metadata"]["sha256"], entry["length"])
                if sizes.get(key[0]) == key[1]:
                    found.setdefault(key, entry["_id"])
        if found:
            ids = list(found.values())
            stamped = self.files.update_many({"_id": {"$in": ids}},
                                             {"$set": {"metadata.lastUsed": datetime.now(timezone.utc)}})
            if stamped.matched_count != len(ids):
                still = {entry["_id"] for entry in self.files.find({"_id": {"$in": ids}}, {"_id": 1})}
                found = {key: blob_id for key, blob_id in found.items() if blob_id in still}
        return found

    def put(self, slices: Iterator[bytes], sha256: str, size: int, content_type: str) -> ObjectId:
        """Store bytes unless an identical blob exists, in GridFS's layout."""
        existing = self.reuse(sha256, size)
        if existing is not None:
            return existing
        return self.put_new(slices, sha256, content_type)

    def put_new(self, slices: Iterator[bytes], sha256: str, content_type: str) -> ObjectId:
        """Store bytes as a new blob (the caller looked for an identical one).

        Chunks are written a few at a time and the file entry last, so a blob that can be
        found is always complete. (pymongo's GridIn buffers up to 48 MB of chunk documents
        and encodes them again to send: twice a large attachment's size in memory.)
        """
        blob_id = ObjectId()
        try:
            length = self._write_chunks(blob_id, slices)
            self.files.insert_one(self._file_entry(blob_id, length, sha256, content_type))
        except BaseException as error:
            self._abandon([blob_id], error)
        return blob_id

    def put_many(self, blobs: list[tuple[bytes, str, str]]) -> list[ObjectId]:
        """Store in-memory blobs (data, sha256, content type) as new blobs with a handful of
        batched inserts instead of two round trips each; chunks first, file entries last, as
        put_new does."""
        ids = [ObjectId() for _ in blobs]
        if not blobs:
            return ids
        try:
            batch: list[dict[str, Any]] = []
            pending = 0
            for blob_id, (data, _, _) in zip(ids, blobs):
                for number, start in enumerate(range(0, len(data), CHUNK_BYTES)):
                    piece = data[start:start + CHUNK_BYTES]
                    batch.append({"files_id": blob_id, "n": number, "data": Binary(piece)})
                    pending += len(piece)
                if pending >= WRITE_BATCH_BYTES:
                    self.chunks.insert_many(batch, ordered=False)
                    batch, pending = [], 0
            if batch:
                self.chunks.insert_many(batch, ordered=False)
            self.files.insert_many([self._file_entry(blob_id, len(data), sha256, content_type)
                                    for blob_id, (data, sha256, content_type) in zip(ids, blobs)], ordered=False)
        except BaseException as error:
            self._abandon(ids, error)
        return ids

    @staticmethod
    def _file_entry(blob_id: ObjectId, length: int, sha256: str, content_type: str) -> dict[str, Any]:
        return {"_id": blob_id, "length": length, "chunkSize": CHUNK_BYTES,
                "uploadDate": datetime.now(timezone.utc), "filename": sha256,
                "metadata": {"sha256": sha256, "contentType": content_type}}

    def _abandon(self, ids: list[ObjectId], error: BaseException) -> None:
        """Remove what a failed write left (the sweep would too, later) and re-raise."""
        with contextlib.suppress(PyMongoError):
            self.files.delete_many({"_id": {"$in": ids}})
            self.chunks.delete_many({"files_id": {"$in": ids}})
        if isinstance(error, BulkWriteError) and not error.details.get("writeErrors"):
            # Only the write concern failed, as GridIn reports it: MongoDB is unavailable.
            raise WriteConcernError("chunk batch not acknowledged", 64, error.details) from error
        raise error

    def _write_chunks(self, blob_id: ObjectId, slices: Iterator[bytes]) -> int:
        pending = bytearray()
        batch: list[dict[str, Any]] = []
        number = length = 0
        for piece in slices:
            pending += piece
            length += len(piece)
            while len(pending) >= CHUNK_BYTES:
                batch.append({"files_id": blob_id, "n": number, "data": Binary(bytes(pending[:CHUNK_BYTES]))})
                del pending[:CHUNK_BYTES]
                number += 1
                if len(batch) >= UPLOAD_BATCH_CHUNKS:
                    self.chunks.insert_many(batch)
                    batch = []
        if pending:
            batch.append({"files_id": blob_id, "n": number, "data": Binary(bytes(pending))})
        if batch:
            self.chunks.insert_many(batch)
        return length

    def stream(self, blob_id: ObjectId) -> "BlobStream | None":
        """The blob's length and its bytes chunk by chunk, or None when it is gone.

        Two chunks per round trip: pymongo's GridOut fetches up to 16 MB at a time, which
        made a worker grow by 33 MB while serving a 40 MB attachment.
        """
        entry = self.files.find_one({"_id": blob_id}, {"length": 1})
        if entry is None:
            return None
        cursor = self.chunks.find({"files_id": blob_id}, {"n": 1, "data": 1, "_id": 0}).sort("n", 1).batch_size(2)
        return BlobStream(entry["length"], _chunks_in_order(cursor, blob_id))

    def delete_if_unused(self, blob_id: ObjectId, cutoff: datetime) -> bool:
        """Delete a blob unless an ingest reused it after cutoff; True when deleted."""
        removed = self.files.delete_one({"_id": blob_id, "$or": [
            {"metadata.lastUsed": {"$exists": False}}, {"metadata.lastUsed": {"$lt": cutoff}}]})
        if removed.deleted_count:
            self.chunks.delete_many({"files_id": blob_id})
        return bool(removed.deleted_count)
