"""Rebuilt skeletons kept on the message, so FETCH streams BODY[] without the email package.

Building the MIME skeleton (mailio.Rebuild) is most of a FETCH's work, ~3 ms a message; the
bytes it yields depend only on the document's rebuild inputs (mailio.REBUILD_INPUTS) and the
rebuild's code. The first rebuild (usually the numbering pass sizing the message) stores the
skeleton's pieces, CRLF lines, on the document as `imap_skeleton`, tagged with the rebuild
version and a digest of those inputs; later fetches stream from it through the same
mailio.skeleton_chunks that GET /emails/<id>/raw ends in, so the bytes are identical. A
changed rebuild, changed inputs or a malformed entry is ignored and rebuilt. Skeletons over
MAX_SKELETON_BYTES (large inline bodies) are not kept: those messages rebuild each time, and
a document (kept under 15 MB by the archive) stays within MongoDB's 16 MB cap. Parts' bytes are never cached; they stream from storage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import bson

from .. import mailio

SKELETON_FIELD = "imap_skeleton"
MAX_SKELETON_BYTES = 256 * 1024
CRLF = b"\r\n"


def inputs_digest(document: Mapping[str, Any]) -> str:
    """A digest of everything the rebuild reads from the document (stored order, as BSON)."""
    inputs = {field: document[field] for field in mailio.REBUILD_INPUTS if field in document}
    return hashlib.sha256(bson.encode(inputs)).hexdigest()


def _stored_record(document: Mapping[str, Any], position: int) -> dict[str, Any] | None:
    """The part record at a slot's position as Rebuild numbers them: attachments first, then inlines."""
    attachments = list(document.get("attachments") or [])
    inlines = list(document.get("inlines") or [])
    if 0 <= position < len(attachments):
        return attachments[position]
    if len(attachments) <= position < len(attachments) + len(inlines):
        return inlines[position - len(attachments)]
    return None


def _cached(document: Mapping[str, Any], version: str) -> tuple[list[bytes], list[mailio.PartSlot]] | None:
    """The stored skeleton when it was built by this rebuild version from these very inputs."""
    entry = document.get(SKELETON_FIELD)
    if not isinstance(entry, dict) or entry.get("v") != version:
        return None
    pieces, slots = entry.get("p"), entry.get("s")
    if not isinstance(pieces, list) or not isinstance(slots, list) or len(pieces) != len(slots) + 1:
        return None
    if not all(isinstance(piece, bytes) for piece in pieces) or entry.get("d") != inputs_digest(document):
        return None
    rebuilt_slots = []
    for slot in slots:
        if not (isinstance(slot, list) and len(slot) == 3 and isinstance(slot[0], int)):
            return None
        record = _stored_record(document, slot[0])
        if record is None:
            return None
        rebuilt_slots.append(mailio.PartSlot(slot[0], record, bool(slot[1]), bool(slot[2])))
    return [bytes(piece) for piece in pieces], rebuilt_slots


def _entry(document: Mapping[str, Any], pieces: list[bytes], slots: list[mailio.PartSlot],
           version: str) -> dict[str, Any] | None:
    if sum(len(piece) for piece in pieces) > MAX_SKELETON_BYTES:
        return None
    return {"v": version, "d": inputs_digest(document), "p": pieces,
            "s": [[slot.position, slot.as_text, slot.encapsulated] for slot in slots]}


def message_chunks(archive, document: Mapping[str, Any],
                   version: str) -> tuple[Iterator[bytes], dict[str, Any] | None]:
    """The message's bytes (CRLF), streamed exactly as mailio.MessageSource(archive,
    document).chunks() streams them, and the skeleton entry to store on the document (None
    when the stored one was used, or the skeleton is too large to keep). `archive` reads
    the parts (a ScopedArchive in a session)."""
    email_id = str(document["_id"])
    cached = _cached(document, version)
    if cached is not None:
        pieces, slots = cached
        return mailio.skeleton_chunks(archive, email_id, pieces, slots, CRLF), None
    rebuild = mailio.Rebuild(document)
    pieces = rebuild.skeleton(CRLF.decode())
    return (mailio.skeleton_chunks(archive, email_id, pieces, rebuild.slots, CRLF),
            _entry(document, pieces, rebuild.slots, version))
