"""Mail out of and into the archive: rebuild stored messages as MIME, stream them as mbox,
and import raw RFC 5322 mail through the webhook's own ingest.

ImprovMX's JSON does not carry the original MIME, so a message is rebuilt from what is
stored: its headers (ImprovMX's parser keeps neither their order nor their raw encoding),
its bodies and the exact bytes of every part. Part bytes are streamed between a MIME
skeleton that the standard library's email package writes, so a 40 MB attachment never sits
in memory, and an mbox of the whole archive streams at constant memory.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import itertools
import json
import logging
import re
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy as email_policy
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser
from email.utils import format_datetime, formataddr, parsedate_to_datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Generator, Iterable, Iterator, Mapping

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from .archive import IngestResult, index_hint
from .db import DatabaseUnavailable
from .payload import parse_address_list
from .times import as_utc

log = logging.getLogger(__name__)

RECONSTRUCTED_HEADER = "X-Archive-Reconstructed"
# The message's id in the archive it was exported from: importing the file back into that
# archive is then recognised as a duplicate, and a restore into an empty one keeps the ids.
ARCHIVE_ID_HEADER = "X-Archive-Id"
RECONSTRUCTED_NOTE = ("rebuilt by improvmx-webhook-archive from the stored webhook JSON; MIME structure "
                      "and header order are not the original and DKIM signatures no longer verify")
UNREPRESENTABLE_HEADER = "X-Archive-Invalid-Header"
# Never copied from the stored headers: the rebuild writes its own MIME framing, and Bcc
# must not leak to whoever opens the file.
# Nor is the header that marks an incomplete export: only the export's own marker carries it.
INCOMPLETE_EXPORT_HEADER = "X-Archive-Export-Incomplete"
NEVER_COPIED = frozenset({"content-type", "content-transfer-encoding", "mime-version", "content-disposition",
                          "content-id", "content-length", "bcc",
                          RECONSTRUCTED_HEADER.lower(), ARCHIVE_ID_HEADER.lower(), UNREPRESENTABLE_HEADER.lower(),
                          INCOMPLETE_EXPORT_HEADER.lower()})
# RFC 5322 section 3.6 order: trace fields, then originator and destination fields.
TRACE_FIELDS = ("return-path", "received")
ORIGINATOR_FIELDS = ("date", "from", "sender", "reply-to", "to", "cc", "message-id", "in-reply-to",
                     "references", "subject", "comments", "keywords")
# Payload fields (mailparse takes these out of `headers`) and the header each one becomes.
FIELD_HEADERS = {"return-path": "Return-Path", "date": "Date", "from": "From", "sender": "Sender",
                 "to": "To", "cc": "Cc", "message-id": "Message-ID", "subject": "Subject"}
ADDRESS_HEADERS = frozenset({"from", "sender", "to", "cc", "reply-to", "delivered-to", "return-path"})
ADDRESS_LISTS = frozenset({"from", "to", "cc", "reply-to", "resent-from", "resent-to", "resent-cc"})

HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext: printable ASCII except ':'
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
ADDRESS_SPECIALS = re.compile(r"[\s<>(),;:\"\\\[\]\x00-\x1f\x7f]")
MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
FROM_LINE = re.compile(rb"^(>*From )", re.M)
QUOTED_FROM_LINE = re.compile(rb"^>(>*From )", re.M)

MIME_POLICY = email_policy.default.clone(cte_type="7bit", refold_source="none")
MAX_HEADER_LINE = 78  # RFC 5322's recommended line length, in octets
ADDRESS_STAND_IN = "stand-in@archive.invalid"
BASE64_LINE_BYTES = 57  # 76 base64 characters per line, as RFC 2045 asks
BASE64_LINE_CHARS = 76
BASE64_BLOCK_LINES = 512
_BASE64_BLOCK = struct.Struct(f"{BASE64_LINE_CHARS}s" * BASE64_BLOCK_LINES)
EXPORT_BATCH = 200  # message ids fetched per keyset page of an export


# ---------------------------------------------------------------------------------------------
# Header values: neutralised, encoded and folded here, so hostile stored values stay one header
# ---------------------------------------------------------------------------------------------

def valid_text(value: str) -> str:
    """The text with lone surrogates replaced by U+FFFD: a JSON escape such as \\udc00 that no
    UTF-8 can carry. Ingest replaces them in the document, but text read back from GridFS is
    decoded with surrogatepass, so the rebuild does not count on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def one_line(value: str) -> str:
    """CR, LF and other control characters become a space: a value can never start a header."""
    return CONTROL_CHARACTERS.sub(" ", valid_text(value)).strip()


class Utf8Addresses(str):
    """An address list holding an address that is not ASCII (RFC 6531 `josé@exämple.com`,
    or U+FFFD from damaged bytes). An address has no encoded form (RFC 2047 words are not
    allowed in one, and IDNA changes what a grant or search matches), so the header is
    written as UTF-8 (RFC 6532). `texts` are the list's addresses, for folding."""

    texts: tuple[str, ...]

    def __new__(cls, texts: Iterable[str]) -> "Utf8Addresses":
        texts = tuple(texts)
        value = super().__new__(cls, ", ".join(texts))
        value.texts = texts
        return value


class Utf8Header(str):
    """A header value the rebuild has folded itself, written as UTF-8 (RFC 6532)."""


def _fold_utf8_addresses(name: str, texts: tuple[str, ...]) -> Utf8Header:
    """One address per continuation line once a line would pass 78 octets: a fold may
    only fall between addresses, never inside one."""
    folded, width = "", len(name) + 2
    for number, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        if number and width + 2 + size > MAX_HEADER_LINE:
            folded, width = f"{folded},\n {text}", 1 + size
        else:
            folded, width = (f"{folded}, {text}", width + 2 + size) if number else (text, width + size)
    return Utf8Header(folded)


def encode_header_value(name: str, value: str) -> str:
    """An ASCII header value, folded at spaces; non-ASCII text as RFC 2047 encoded words;
    an address list holding a non-ASCII address as folded UTF-8 (see Utf8Addresses)."""
    if isinstance(value, Utf8Addresses):
        return _fold_utf8_addresses(name, value.texts)
    value = one_line(value)
    charset = None if value.isascii() else "utf-8"
    return Header(value, charset, header_name=name).encode(splitchars=" ", linesep="\n")


def _clean_address(value: Any) -> str | None:
    """`local@domain` cut where a character would end it in a list. A non-ASCII address is
    kept as it is (no IDNA: `straße.de` is not `strasse.de`, and a grant names the address
    as stored)."""
    email_address = ADDRESS_SPECIALS.split(valid_text(str(value or "")).strip().lstrip("<"), 1)[0]
    if email_address.count("@") != 1:
        return None
    return email_address


def _address_text(address: Mapping[str, Any]) -> str | None:
    """`Name <local@domain>` from a stored {name, email}: the name quoted, or RFC 2047
    encoded when it is not ASCII; the address as it is."""
    email_address = _clean_address(address.get("email"))
    if email_address is None:
        return None
    name = address.get("name")
    name = one_line(name) if isinstance(name, str) else ""
    if email_address.isascii() or not name:
        return formataddr((name, email_address), charset="utf-8") if email_address.isascii() else email_address
    # formataddr refuses a non-ASCII address: let it write the name around a stand-in.
    return formataddr((name, ADDRESS_STAND_IN), charset="utf-8").removesuffix(f"<{ADDRESS_STAND_IN}>") \
        + f"<{email_address}>"


def format_addresses(value: Any) -> str | None:
    addresses, _ = parse_address_list(value)
    texts = [text for text in (_address_text(address) for address in addresses) if text]
    if not texts:
        return None
    return ", ".join(texts) if all(text.isascii() for text in texts) else Utf8Addresses(texts)


def _scalar_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def _header_texts(name: str, value: Any) -> list[str]:
    """One text per header line a stored value becomes: a list repeats the header, except
    that an address list is one header (RFC 5322 allows one To, Cc, Reply-To...)."""
    lower = name.lower()
    if lower == "return-path":
        found = [_clean_address(address["email"]) for address in parse_address_list(value)[0]]
        if not found or not found[0]:
            return []
        return [f"<{found[0]}>" if found[0].isascii() else Utf8Addresses([f"<{found[0]}>"])]
    if lower in ADDRESS_LISTS:
        text = format_addresses(value)
        return [text] if text else []
    texts = []
    for item in value if isinstance(value, list) else [value]:
        text = format_addresses(item) if lower in ADDRESS_HEADERS or isinstance(item, dict) and "email" in item \
            else _scalar_text(item)
        if text is not None and one_line(text):
            texts.append(text)
    return texts


def _message_id(value: Any) -> str | None:
    text = one_line(_scalar_text(value[0] if isinstance(value, list) and value else value) or "")
    if not text:
        return None
    return text if text.startswith("<") and text.endswith(">") else f"<{text.strip('<>')}>"


def header_lines(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every stored header as (name, unencoded value), trace fields first, then the
    originator and destination fields, then the rest in stored order."""
    entries: list[tuple[str, str]] = []
    extra = document.get("extra") if isinstance(document.get("extra"), dict) else {}
    for field, name in FIELD_HEADERS.items():
        value = document[field] if field in document else extra.get(field)  # `sender` is kept as extra
        if field == "message-id":
            text = _message_id(value)
            entries += [(name, text)] if text else []
        else:
            entries += [(name, text) for text in _header_texts(name, value)[:1]]
    stored = document.get("headers")
    for name, value in (stored.items() if isinstance(stored, dict) else ()):
        name = str(name)
        lower = name.lower()
        if lower in NEVER_COPIED or lower in FIELD_HEADERS:
            continue
        if not HEADER_NAME.match(name):
            entries += [(UNREPRESENTABLE_HEADER, f"{one_line(name)}: {text}") for text in _header_texts(name, value)]
            continue
        entries += [(name, text) for text in _header_texts(name, value)]

    def rank(entry: tuple[str, str]) -> tuple[int, int]:
        lower = entry[0].lower()
        if lower in TRACE_FIELDS:
            return 0, TRACE_FIELDS.index(lower)
        if lower in ORIGINATOR_FIELDS:
            return 1, ORIGINATOR_FIELDS.index(lower)
        return 2, 0

    return sorted(entries, key=rank)  # sorted() is stable: repeats keep their stored order


# ---------------------------------------------------------------------------------------------
# The MIME rebuild
# ---------------------------------------------------------------------------------------------


def _part_type(record: Mapping[str, Any]) -> str:
    """The stored type when it is a valid MIME type. (A multipart/* part is kept as such:
    mailparse stores one only when the original had no boundary, already unreadable.)"""
    content_type = str(record.get("type") or "").strip().lower()
    return content_type if MIME_TYPE.match(content_type) else "application/octet-stream"


def _part_filename(name: Any) -> str | None:
    """The stored file name on one line (the email package quotes and encodes the rest)."""
    return (one_line(name) or None) if isinstance(name, str) else None


def _content_id(cid: Any) -> str | None:
    """`<cid>` with whitespace, brackets and other specials dropped: one token, one header."""
    cid = ADDRESS_SPECIALS.sub("", cid) if isinstance(cid, str) else ""
    return f"<{cid}>" if cid else None


# message/* parts that mailparse keeps whole (as the message's bytes): they travel as 8bit
# text. It keeps only the body of any other message/* part (external-body, partial, global,
# disposition-notification...), parsing the stored text's first lines as headers.
WHOLE_MESSAGE_TYPES = frozenset({"message/rfc822", "message/delivery-status"})
# The header block a stored message/* body is framed in (see PartSlot.encapsulated).
ENCAPSULATED_HEADERS = ('Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: base64")


@dataclass
class PartSlot:
    """A stored part whose bytes stream into the skeleton where its token stands."""

    position: int
    record: dict[str, Any]
    as_text: bool  # message/* parts travel as 8bit text (RFC 2046 forbids base64 for them)
    # Any other message/* part travels as the entity RFC 2046 puts in its body: a header
    # block of its own, then the stored bytes in base64. Written as 8bit text, the stored
    # bytes came back with the file's line endings (CRLF in an .eml) and lost any first lines
    # shaped like headers.
    encapsulated: bool = False


def _body_part(subtype: str, text: str) -> MIMEPart:
    part = MIMEPart(MIME_POLICY)
    part.set_content(text, subtype=subtype, charset="utf-8")
    return part


def _container(subtype: str, children: list[MIMEPart], boundary: str, **params: str) -> MIMEPart:
    part = MIMEPart(MIME_POLICY)
    part["Content-Type"] = f"multipart/{subtype}"
    for key, value in params.items():
        part.set_param(key, value)
    part.set_boundary(boundary)
    for child in children:
        part.attach(child)
    return part


def _stored_part(record: dict[str, Any], token: str, *, inline: bool) -> tuple[MIMEPart, bool, bool]:
    content_type = _part_type(record)
    as_text = content_type.startswith("message/") and record.get("stored_as") == "text"
    encapsulated = as_text and content_type not in WHOLE_MESSAGE_TYPES
    as_text = as_text and not encapsulated
    part = MIMEPart(MIME_POLICY)
    part["Content-Type"] = content_type
    if content_type.startswith("text/") and record.get("stored_as") == "text":
        part.set_param("charset", "utf-8")
    filename = _part_filename(record.get("name"))
    if filename:
        part.set_param("name", filename)
    part.add_header("Content-Disposition", "inline" if inline else "attachment",
                    **({"filename": filename} if filename else {}))
    content_id = _content_id(record.get("cid"))
    if content_id:
        part["Content-ID"] = content_id
    description = record.get("description")
    if isinstance(description, str) and one_line(description):
        part["Content-Description"] = one_line(description)
    part["Content-Transfer-Encoding"] = "7bit" if encapsulated else "8bit" if as_text else "base64"
    part.set_payload(token)
    return part, as_text, encapsulated


def _boundaries(document: Mapping[str, Any]) -> Iterator[str]:
    """The boundaries of one message's containers: the same on every rebuild (an IMAP client
    compares BODY[] with RFC822.SIZE and expects the same bytes each time), yet unguessable
    by the sender, who never learns the archive's id for the message."""
    seed = str(document.get("_id") or document.get("idempotency_key") or "")
    for number in itertools.count():
        yield "=_archive_" + hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:24]


def _body_tree(document: Mapping[str, Any], boundaries: Iterator[str]) -> MIMEPart | None:
    text, html = document.get("text"), document.get("html")
    text = valid_text(text) if isinstance(text, str) and text else None
    html = valid_text(html) if isinstance(html, str) and html else None
    if text and html:
        return _container("alternative", [_body_part("plain", text), _body_part("html", html)], next(boundaries))
    if text or html:
        return _body_part("plain" if text else "html", text or html)
    return None


class _SkeletonGenerator(BytesGenerator):
    """Writes a message/* part's token as plain text (the stock generator expects a parsed
    message object there), and the headers the rebuild folded as UTF-8 as they are (the
    stock one writes ASCII only, or re-encodes them as RFC 2047 words)."""

    def _handle_message(self, msg):
        self._handle_text(msg)

    _handle_message_delivery_status = _handle_message

    def _write_headers(self, msg):
        for name, value in msg.raw_items():
            if isinstance(value, Utf8Header):
                self._fp.write((f"{name}: {value}".replace("\n", self._NL) + self._NL).encode("utf-8"))
            else:
                self._fp.write(self.policy.fold_binary(name, value))
        self.write(self._NL)


# Every document field the rebuild reads (the parts' bytes aside, read as it streams): a
# skeleton kept from an earlier rebuild holds only while these are unchanged.
REBUILD_INPUTS = ("_id", "idempotency_key", *FIELD_HEADERS, "extra", "headers", "text", "html", "attachments",
                  "inlines")


class Rebuild:
    """One stored message as MIME: a skeleton from the email package, and the slots where
    the stored parts' bytes go."""

    def __init__(self, document: Mapping[str, Any]):
        self.document = document
        self.nonce = secrets.token_hex(16)
        self.slots: list[PartSlot] = []
        attachments = list(document.get("attachments") or [])
        inlines = list(document.get("inlines") or [])
        boundaries = _boundaries(document)
        tree = _body_tree(document, boundaries)
        if inlines:
            related = [tree] if tree is not None else []
            related += [self._slot(len(attachments) + i, record, inline=True) for i, record in enumerate(inlines)]
            tree = _container("related", related, next(boundaries), type=related[0].get_content_type())
        if attachments:
            mixed = [tree] if tree is not None else []
            mixed += [self._slot(i, record, inline=False) for i, record in enumerate(attachments)]
            tree = _container("mixed", mixed, next(boundaries))
        self.tree = tree if tree is not None else _body_part("plain", "")

    def _slot(self, position: int, record: dict[str, Any], *, inline: bool) -> MIMEPart:
        part, as_text, encapsulated = _stored_part(record, f"{self.nonce}{len(self.slots):06d}", inline=inline)
        self.slots.append(PartSlot(position, record, as_text, encapsulated))
        return part

    def skeleton(self, linesep: str) -> list[bytes]:
        """The message bytes split around the part tokens: [text, slot, text, slot, ..., text]."""
        message = EmailMessage(MIME_POLICY)
        for name, value in header_lines(self.document):
            message.set_raw(name, encode_header_value(name, value))
        message.set_raw(RECONSTRUCTED_HEADER, encode_header_value(RECONSTRUCTED_HEADER, RECONSTRUCTED_NOTE))
        if self.document.get("_id") is not None:
            message.set_raw(ARCHIVE_ID_HEADER, str(self.document["_id"]))
        message.set_raw("MIME-Version", "1.0")
        for name, value in self.tree.raw_items():
            message[name] = value
        message.set_payload(self.tree.get_payload())
        out = BytesIO()
        _SkeletonGenerator(out, mangle_from_=False, policy=MIME_POLICY.clone(linesep=linesep)).flatten(message)
        return re.split(rb"%s\d{6}" % self.nonce.encode(), out.getvalue())


def _base64_lines(chunks: Iterable[bytes], linesep: bytes) -> Iterator[bytes]:
    """Base64 in 76-character lines, each ending in linesep, a stored chunk at a time.

    The lines are cut BASE64_BLOCK_LINES at a time by one struct unpack, in C: slicing them
    one by one in Python cost three times the encoding itself (bench/imap.py's FETCH path)."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        usable = len(data) - len(data) % BASE64_LINE_BYTES
        carry = data[usable:]
        if usable:
            yield _split_base64(binascii.b2a_base64(memoryview(data)[:usable], newline=False), linesep)
    if carry:
        yield binascii.b2a_base64(carry, newline=False) + linesep


def _split_base64(encoded: bytes, linesep: bytes) -> bytes:
    """Whole 76-character lines of base64 (len(encoded) a multiple of 76), each + linesep."""
    block = BASE64_LINE_CHARS * BASE64_BLOCK_LINES
    whole = len(encoded) - len(encoded) % block
    lines: list[bytes] = []
    for offset in range(0, whole, block):
        lines.extend(_BASE64_BLOCK.unpack_from(encoded, offset))
    lines.extend(encoded[i:i + BASE64_LINE_CHARS] for i in range(whole, len(encoded), BASE64_LINE_CHARS))
    lines.append(b"")
    return linesep.join(lines)


def _text_lines(chunks: Iterable[bytes], linesep: bytes) -> bytes:
    """A message/* part's stored text with its line endings made linesep, ending in one."""
    data = b"".join(chunks)
    lines = data.splitlines()
    return linesep.join(lines) + linesep if lines else b""


class MessageSource:
    """The rebuilt bytes of one message, streamed: the skeleton, and each part's bytes read
    from the archive only when the stream reaches it."""

    def __init__(self, archive, document: Mapping[str, Any]):
        self.archive = archive
        self.email_id = str(document["_id"])
        self.rebuild = Rebuild(document)

    def chunks(self, linesep: bytes = b"\r\n", *, quote_from: bool = False) -> Iterator[bytes]:
        """The message; with quote_from, lines starting `>*From ` gain a `>` (mboxrd).

        The skeleton is built before the first byte, so a rebuild that fails does so before
        a response has started. Base64 lines cannot start with `From `: only text is searched.
        """
        pieces = self.rebuild.skeleton(linesep.decode())
        quote = (lambda data: FROM_LINE.sub(rb">\1", data)) if quote_from else (lambda data: data)
        return skeleton_chunks(self.archive, self.email_id, pieces, self.rebuild.slots, linesep, quote)


def skeleton_chunks(archive, email_id: str, pieces: list[bytes], slots: list[PartSlot], linesep: bytes = b"\r\n",
                    quote=lambda data: data) -> Iterator[bytes]:
    """The message from a skeleton (Rebuild.skeleton(linesep) and the Rebuild's slots), each
    part's bytes read only when the stream reaches it. The IMAP view streams skeletons it
    cached this way (imap/skeletons.py): the same bytes without the email package's cost."""
    yield quote(pieces[0])
    for slot, following in zip(slots, pieces[1:]):
        chunks = _part_chunks(archive, email_id, slot)
        with contextlib.closing(chunks):  # a closed download closes the part's cursor
            if slot.as_text:
                yield quote(_text_lines(chunks, linesep))
            else:
                if slot.encapsulated:
                    yield linesep.join(line.encode() for line in ENCAPSULATED_HEADERS) + linesep * 2
                yield from _base64_lines(chunks, linesep)
        # The token stood alone on its line: the generator's line break after it is ours.
        yield quote(following[len(linesep):] if following.startswith(linesep) else following)


def _part_chunks(archive, email_id: str, slot: PartSlot) -> Generator[bytes, None, None]:
    blob = archive.part_stream(slot.record)
    if blob is None:
        log.error("export: part content missing email_id=%s position=%d", email_id, slot.position)
        return (chunk for chunk in ())
    return blob.chunks


class Unrebuildable(Exception):
    """A stored message the rebuild cannot turn into MIME (a bug met on unusual stored data);
    `reason` names what failed, never the stored values."""

    def __init__(self, email_id: str, reason: str):
        super().__init__(f"{email_id}: {reason}")
        self.email_id = email_id
        self.reason = reason


def rebuild_message(archive, email_id: str, linesep: bytes = b"\r\n") -> Iterator[bytes] | None:
    """The message rebuilt as RFC 5322 bytes (CRLF line endings by default), streamed; None
    for an unknown id. The API's /raw, the CLI's .eml export and the UI's source view use it.
    Raises Unrebuildable before the first byte when the message cannot be rebuilt."""
    document = archive.find(email_id)
    if document is None:
        return None
    try:
        return MessageSource(archive, document).chunks(linesep)
    except Exception as error:
        log.exception("rebuild: message cannot be rebuilt email_id=%s", email_id)
        raise Unrebuildable(email_id, f"cannot be rebuilt ({type(error).__name__})") from error


def eml_filename(document: Mapping[str, Any]) -> str:
    """`<received_at>-<id>.eml`: sorts by arrival in a file manager, unique by id."""
    received = document.get("received_at")
    stamp = as_utc(received).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ") if isinstance(received, datetime) \
        else "00000000T000000Z"
    return f"{stamp}-{document['_id']}.eml"


# ---------------------------------------------------------------------------------------------
# mbox export (mboxrd): oldest first, one message's parts in memory at most
# ---------------------------------------------------------------------------------------------

def mbox_separator(document: Mapping[str, Any]) -> bytes:
    """`From <sender> <asctime>`: the sender without spaces (MAILER-DAEMON when it is not
    ASCII: the line is not MIME, and dropping characters would name someone else), the time
    in UTC."""
    sender = ADDRESS_SPECIALS.sub("", str(document.get("from_email") or ""))
    sender = sender if sender.isascii() else ""
    received = document.get("received_at")
    moment = as_utc(received).astimezone(timezone.utc) if isinstance(received, datetime) else datetime.now(timezone.utc)
    return f"From {sender or 'MAILER-DAEMON'} {time.asctime(moment.timetuple())}\n".encode()


def mbox_entry(archive, document: Mapping[str, Any]) -> Iterator[bytes]:
    """One mbox entry: separator line, the message with LF endings and `From ` quoted
    reversibly (mboxrd), and the blank line that ends it. Raises before the first byte
    when the message cannot be rebuilt."""
    body = MessageSource(archive, document).chunks(b"\n", quote_from=True)
    return _framed(mbox_separator(document), body)


def _framed(separator: bytes, body: Iterator[bytes]) -> Iterator[bytes]:
    yield separator
    last = b"\n"
    for chunk in body:
        if chunk:
            last = chunk[-1:]
            yield chunk
    yield b"\n" if last == b"\n" else b"\n\n"


# The equality a listing filter starts with, and the index that serves it in received_at,
# _id order (every one of them ends with that key, so walked backwards it is oldest first).
SORTED_INDEXES = (("from_email", "by_sender"), ("recipients", "by_recipient"), ("audience", "by_audience"),
                  ("processed", "by_processed"), ("has_attachments", "by_attachments"))


def export_hint(query: Mapping[str, Any]) -> str:
    """The index an export page is read through. Named rather than left to the planner:
    next to the keyset's $nor, SecantusDB's planner scans the whole collection."""
    hint = index_hint(dict(query))
    if hint:
        return hint
    return next((index for field, index in SORTED_INDEXES if field in query), "newest_first")


def oldest_first(archive, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every matching message, oldest first, fetched whole one at a time.

    Keyset pages of ids (received_at, _id ascending: the newest-first indexes walked
    backwards) instead of one long cursor, which a slow download would let time out.
    """
    last: tuple[datetime, ObjectId] | None = None
    batch = EXPORT_BATCH
    hint = export_hint(query)
    while True:
        selector = dict(query)
        if last is not None:
            moment, email_id = last
            # A range the index bounds, and the few ties on it already exported left out.
            selector["$and"] = [*query.get("$and", []), {"received_at": {"$gte": moment}},
                                {"$nor": [{"received_at": moment, "_id": {"$lte": email_id}}]}]
        page = list(archive.emails.find(selector, {"_id": 1, "received_at": 1})
                    .sort([("received_at", ASCENDING), ("_id", ASCENDING)]).limit(batch).hint(hint))
        for entry in page:
            document = archive.find(str(entry["_id"]))
            if document is not None:
                yield document
        if len(page) < batch:
            return
        last = (page[-1]["received_at"], page[-1]["_id"])


MARKER_SENDER = "ImprovMX Webhook Archive <export@archive.invalid>"


class MboxExport:
    """Every message a query matches as one mbox, oldest first, streamed.

    A message that cannot be rebuilt (or whose parts fail to read half-way) must not end
    everyone's export, and must not be missing in silence either: the export goes on, and
    ends with a marker message naming each one (see incomplete_export_marker). Closing the
    iterator (a client that went away) stops the export and closes the part being read.
    """

    def __init__(self, archive, query: Mapping[str, Any], progress=None):
        self.archive = archive
        self.query = query
        self.progress = progress  # called with 1 per message considered (a CLI progress bar)
        self.written = 0
        self.missing: list[tuple[str, str]] = []  # (email_id, why it is not in the file)

    def __iter__(self) -> Iterator[bytes]:
        for document in oldest_first(self.archive, self.query):
            if self.progress is not None:
                self.progress(1)
            email_id = str(document["_id"])
            try:
                entry = mbox_entry(self.archive, document)
            except Exception as error:
                log.exception("export: message cannot be rebuilt, named in the closing marker email_id=%s", email_id)
                self.missing.append((email_id, f"cannot be rebuilt ({type(error).__name__})"))
                continue
            try:
                with contextlib.closing(entry):  # closed early, it closes the part being read
                    for chunk in entry:
                        yield chunk
            except Exception as error:
                # Bytes of it are out already: end its line and entry so the next one parses.
                log.exception("export: message cut short, named in the closing marker email_id=%s", email_id)
                self.missing.append((email_id, f"incomplete, its parts could not be read ({type(error).__name__})"))
                yield b"\n\n"
                continue
            self.written += 1
        if self.missing:
            yield incomplete_export_marker(self.missing)


def mbox_export(archive, query: Mapping[str, Any]) -> Iterator[bytes]:
    """The whole mbox, streamed, closed by a marker message if any message is missing."""
    return iter(MboxExport(archive, query))


def incomplete_export_marker(missing: list[tuple[str, str]]) -> bytes:
    """The mbox entry that ends an export some messages are missing from.

    An HTTP download has already answered 200 when a message fails, and a trailer does not
    survive every proxy; a last message is what every mail program, `grep` and script sees.
    It carries X-Archive-Export-Incomplete (the count) and lists each id with the reason.
    """
    now = datetime.now(timezone.utc)
    lines = "\n".join(f"{email_id} {why}" for email_id, why in missing)
    message = EmailMessage(MIME_POLICY)
    message["From"] = MARKER_SENDER
    message["Date"] = format_datetime(now)
    message["Subject"] = f"Export incomplete: {len(missing)} message(s) are not in this file"
    message["Message-ID"] = "<export-incomplete-%s@archive.invalid>" % hashlib.sha256(
        f"{now.isoformat()}\n{lines}".encode()).hexdigest()[:32]
    message[INCOMPLETE_EXPORT_HEADER] = str(len(missing))
    message.set_content(
        f"This export is incomplete: the {len(missing)} message(s) below matched it but are not in\n"
        "this file (or, if cut short, not whole). Every other message is. They are still stored\n"
        "in the archive: read them with GET /emails/<id> or in the web UI, and report the reason\n"
        "shown, with the server's log line for the id, as a bug.\n\n"
        f"{lines}\n", charset="utf-8")
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=MIME_POLICY.clone(linesep="\n")).flatten(message)
    body = FROM_LINE.sub(rb">\1", out.getvalue())
    return b"".join(_framed(f"From MAILER-DAEMON {time.asctime(now.timetuple())}\n".encode(), iter([body])))


# ---------------------------------------------------------------------------------------------
# Import: raw RFC 5322 mail into the webhook's payload shape
# ---------------------------------------------------------------------------------------------

MESSAGE_HEADERS = ("from", "to", "date", "subject", "message-id", "received", "sender", "return-path")
FUTURE_TOLERANCE = timedelta(days=1)


class NotAMessage(ValueError):
    """The bytes are not an RFC 5322 message (no header block this archive can use)."""


@dataclass
class ParsedImport:
    payload: dict[str, Any]
    received_at: datetime
    archive_id: ObjectId | None  # set when the message is one this software rebuilt


def _plausible(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    moment = as_utc(moment).astimezone(timezone.utc)
    if moment.year < 1970 or moment > datetime.now(timezone.utc) + FUTURE_TOLERANCE:
        return None
    return moment


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return _plausible(parsedate_to_datetime(one_line(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def arrival_time(headers) -> datetime:
    """When the message arrived: the top Received: header's date, else Date:, else now."""
    received = headers.get_all("Received") or []
    top = str(received[0]).rpartition(";")[2] if received and ";" in str(received[0]) else None
    return _parse_date(top) or _parse_date(str(headers.get("Date") or "")) or datetime.now(timezone.utc)


# An mbox separator line as RFC 4155 and mutt's is_from() know it: `From `, the envelope
# sender, an asctime date (the weekday optional, a zone name or offset allowed). Only such a
# line, or any `From ` line after an empty one in a file whose first line is not one,
# starts a message: a raw message saved with an envelope line keeps its unquoted
# "From here on..." body lines.
MBOX_SEPARATOR = re.compile(
    rb"From \S+ +(?:[A-Z][a-z]{2},? +)?[A-Z][a-z]{2} +\d{1,2} +\d{1,2}:\d{2}(?::\d{2})?"
    rb"(?: +[A-Za-z]{1,5}| +[+-]\d{4})? +\d{4}(?: +[+-]\d{4})? *\r?\n?\Z")
ENVELOPE_LINE = re.compile(rb"From (?! *:)")  # `From x ...`, never a `From :` header


def message_bytes(raw: bytes) -> bytes:
    """The message alone, the same whichever way it arrives: without an mbox envelope line in
    front (a file cut from an mbox) and with exactly one line ending at the end (mbox framing
    adds or drops the empty lines after a message, so they cannot be told from its own)."""
    if ENVELOPE_LINE.match(raw):
        raw = raw.partition(b"\n")[2]
    content = raw.rstrip(b"\r\n")
    return content + (b"\r\n" if raw.endswith(b"\r\n") else b"\n") if content.strip() else b""


def parse_raw_message(raw: bytes) -> ParsedImport:
    """The payload ImprovMX would have sent for these bytes, and the message's arrival time.

    Raises NotAMessage for bytes without a usable header block.
    """
    raw = message_bytes(raw)
    if not raw.strip():
        raise NotAMessage("the message is empty")
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(raw)
    names = {name.lower() for name in headers.keys()}
    if not names.intersection(MESSAGE_HEADERS):
        raise NotAMessage("not an RFC 5322 message: none of From, To, Date, Subject, Message-ID or Received")
    from .sample import payload_from_mime  # mailparse: loaded by the first import, not by every worker

    try:
        payload = payload_from_mime(raw)
    except Exception as error:  # mailparse raises whatever its parsing of hostile MIME hits
        raise NotAMessage(f"the MIME structure cannot be parsed ({type(error).__name__})") from None
    return ParsedImport(payload, arrival_time(headers), exported_id(headers))


def exported_id(headers) -> ObjectId | None:
    """The archive id a rebuilt message carries, if it carries a valid one."""
    if headers.get(RECONSTRUCTED_HEADER) is None:
        return None
    value = one_line(str(headers.get(ARCHIVE_ID_HEADER) or ""))
    return ObjectId(value) if ObjectId.is_valid(value) else None


def import_raw(archive, raw: bytes) -> tuple[IngestResult, ParsedImport]:
    """Parse raw mail and store it through the webhook's ingest (idempotent), marked as
    imported with its own arrival time. A message exported from this archive whose original
    is still here is a duplicate; one exported elsewhere keeps its id. Raises NotAMessage or
    DatabaseUnavailable."""
    parsed = parse_raw_message(raw)
    if parsed.archive_id is not None:
        try:
            present = archive.emails.find_one({"_id": parsed.archive_id}, {"_id": 1})
        except PyMongoError as error:
            raise DatabaseUnavailable(type(error).__name__) from error
        if present:
            return IngestResult(str(parsed.archive_id), True), parsed
    result = archive.ingest(parsed.payload, email_id=parsed.archive_id, received_at=parsed.received_at,
                            source="import")
    return result, parsed


def unquote_mbox(raw: bytes) -> bytes:
    """Undo mboxrd `>From ` quoting (in an mboxo file this also unquotes `>From ` lines
    that were quoted in the original message: mboxo cannot tell them apart)."""
    return QUOTED_FROM_LINE.sub(rb"\1", raw.replace(b"\r\n", b"\n"))


def is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _mbox_entries(path: Path) -> Iterator[list[bytes]]:
    """The lines of each message of an mbox file, separator lines left out."""
    with path.open("rb") as handle:
        first = handle.readline()
        strict = bool(MBOX_SEPARATOR.match(first))
        current: list[bytes] = []
        previous_empty = False
        for line in handle:
            if line.startswith(b"From ") and (MBOX_SEPARATOR.match(line) if strict else previous_empty):
                yield current
                current = []
            else:
                current.append(line)
            previous_empty = line in (b"\n", b"\r\n")
        yield current


def mbox_messages(path: Path) -> Iterator[bytes]:
    """Each message of an mbox file with one level of `>From ` quoting undone (mboxrd, mboxo)."""
    for lines in _mbox_entries(path):
        yield unquote_mbox(b"".join(lines))


def mbox_count(path: Path) -> int:
    return sum(1 for _ in _mbox_entries(path))


# A file with one of these names is meant to be a message: one that does not parse as mail
# is a failure. Any other file that is not mail (a README beside the .eml files) is skipped.
MESSAGE_SUFFIXES = frozenset({".eml"})


@dataclass
class ImportFile:
    """A file to import: one .eml message, or an mbox holding `count` messages."""

    path: Path
    mbox: bool
    count: int

    @property
    def skipped_unless_mail(self) -> bool:
        """Not mail is no failure here: a lone file whose name does not say it is a message."""
        return not self.mbox and self.path.suffix.lower() not in MESSAGE_SUFFIXES

    def messages(self) -> Iterator[tuple[str, bytes]]:
        """(label for the summary, raw message) for each message, one in memory at a time."""
        if not self.mbox:
            yield str(self.path), self.path.read_bytes()
            return
        for number, raw in enumerate(mbox_messages(self.path), 1):
            yield f"{self.path} #{number}", raw


def find_import_files(paths: Iterable[Path]) -> tuple[list[ImportFile], list[tuple[str, str]]]:
    """The files under the given paths (directories recursively, hidden files skipped), and
    (path, reason) for each path that cannot be read."""
    found: list[ImportFile] = []
    problems: list[tuple[str, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files = [path]
        else:
            problems.append((str(path), "no such file or directory"))
            continue
        for file in files:
            try:
                if is_mbox(file):
                    found.append(ImportFile(file, True, mbox_count(file)))
                else:
                    found.append(ImportFile(file, False, 1))
            except OSError as error:
                problems.append((str(file), f"cannot read ({error.strerror or type(error).__name__})"))
    return found, problems
