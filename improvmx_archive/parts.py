"""Attachment and inline bytes: decoded in slices and kept once per SHA-256 in GridFS.

A 40 MB attachment arrives as ~54 MB of base64 text; decoding it slice by slice keeps memory
flat, and storing by digest means a newsletter's logo is kept once however often it comes.
Content that claims base64 but does not decode is stored exactly as received and flagged.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from bson import ObjectId
from gridfs import GridFSBucket, NoFile

from .payload import Part

SLICE_CHARS = 1024 * 1024  # base64 characters decoded at a time: a few MB of working memory
CHUNK_BYTES = 1024 * 1024 - 1024  # GridFS chunk size: few round trips, well under 16 MB
_WHITESPACE = re.compile(r"[\s]+")

MODE_BASE64 = "base64"
MODE_TEXT = "text"
MODE_RAW = "raw"


class InvalidBase64(ValueError):
    """The content claimed base64 but is not valid base64."""


def _base64_slices(content: str) -> Iterator[bytes]:
    """Decoded bytes of base64 text, strictly validated, a slice at a time."""
    carry = ""
    seen_any = False
    for start in range(0, len(content), SLICE_CHARS):
        piece = carry + _WHITESPACE.sub("", content[start:start + SLICE_CHARS])
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


@dataclass
class Decoded:
    """How a part's bytes are obtained, and their digest and size."""

    mode: str
    sha256: str
    size: int
    flags: list[str]

    def slices(self, content: Any) -> Iterator[bytes]:
        if self.mode == MODE_BASE64:
            return _base64_slices(content)
        return _text_slices(_as_text(content))


def _as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return json.dumps(content, sort_keys=True, default=str)


def _digest(slices: Iterator[bytes]) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    for chunk in slices:
        sha.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), size


def inspect_part(part: Part) -> Decoded:
    """First pass over a part: decide base64 or text, validate, hash. Nothing is stored."""
    content = part.content
    flags = list(part.flags)
    if content is None:
        flags.append("content_missing")
    elif not isinstance(content, str):
        flags.append("content_not_a_string")
    elif part.expects_base64:
        try:
            sha, size = _digest(_base64_slices(content))
            return Decoded(MODE_BASE64, sha, size, flags)
        except InvalidBase64:
            flags.append("invalid_base64")
    mode = MODE_TEXT if isinstance(content, str) and not flags else MODE_RAW
    sha, size = _digest(_text_slices(_as_text(content)))
    return Decoded(mode, sha, size, flags)


class BlobStore:
    """Content-addressed GridFS storage: one file per distinct SHA-256."""

    def __init__(self, database, bucket_name: str = "blobs", write_concern=None):
        self.bucket = GridFSBucket(
            database, bucket_name, chunk_size_bytes=CHUNK_BYTES, write_concern=write_concern
        )
        self.files = database[f"{bucket_name}.files"]
        self.chunks = database[f"{bucket_name}.chunks"]

    def find(self, sha256: str, size: int) -> ObjectId | None:
        found = self.files.find_one({"metadata.sha256": sha256, "length": size}, {"_id": 1})
        return found["_id"] if found else None

    def put(self, slices: Iterator[bytes], sha256: str, size: int, content_type: str) -> ObjectId:
        """Store bytes unless an identical blob exists; GridFS writes the file entry last,
        so a blob that can be found is always complete."""
        existing = self.find(sha256, size)
        if existing is not None:
            return existing
        stream = self.bucket.open_upload_stream(
            sha256, metadata={"sha256": sha256, "contentType": content_type}
        )
        try:
            for chunk in slices:
                stream.write(chunk)
        except BaseException:
            stream.abort()
            raise
        stream.close()
        return stream._id

    def open(self, blob_id: ObjectId):
        """A readable GridFS stream, or None when the blob is gone."""
        try:
            return self.bucket.open_download_stream(blob_id)
        except NoFile:
            return None

    def delete(self, blob_id: ObjectId) -> None:
        """File entry first, then chunks (GridFS's own order): a half-deleted blob is invisible."""
        self.files.delete_one({"_id": blob_id})
        self.chunks.delete_many({"files_id": blob_id})
