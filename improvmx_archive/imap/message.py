"""One rebuilt message as IMAP sees it: its parts as byte ranges of the exact bytes that
BODY[] returns, and the FETCH items built from them.

Sections (BODY[1.2], BODY[HEADER.FIELDS (...)], BODY[2.MIME], ...) are slices of the one
rebuild, so every answer agrees byte for byte with BODY[] and with GET /emails/<id>/raw.
ENVELOPE comes from Twisted's builder, fed by this IMessagePart; BODYSTRUCTURE is built here
(Twisted's lower-cases parameter values, file names included, and keeps their quotes).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email import policy as email_policy
from email.header import Header
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from io import BytesIO

from twisted.mail.imap4 import IMessagePart, collapseNestedLists, getEnvelope
from zope.interface import implementer

HEADER_END = re.compile(rb"\r?\n\r?\n")
HEADER_LINE_START = re.compile(rb"^(?=[^ \t\r\n])", re.M)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _text(value) -> str:
    """A header value unfolded, its raw UTF-8 (RFC 6532 headers) decoded."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _ascii(value: str) -> str:
    """IMAP strings here are ASCII (Twisted's list writer takes nothing else): other text
    as an RFC 2047 encoded word, which every mail program decodes."""
    return value if value.isascii() else Header(value, "utf-8").encode()


@implementer(IMessagePart)
class RawPart:
    """A MIME entity inside the rebuilt bytes: headers raw[:body_start], body after it."""

    def __init__(self, raw: bytes):
        self.raw = raw
        found = HEADER_END.search(raw)
        if found:
            self.header_bytes, self.body = raw[:found.start()] + b"\r\n", raw[found.end():]
        elif raw.startswith(b"\r\n"):
            self.header_bytes, self.body = b"", raw[2:]
        else:
            self.header_bytes, self.body = raw, b""
        self.headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(self.header_bytes)
        self._children: list[RawPart] | None = None

    # IMessagePart
    def getHeaders(self, negate, *names):
        wanted = {name.lower() if isinstance(name, str) else name.decode().lower() for name in names}
        found = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if not names or (lower in wanted) != negate:
                found.setdefault(lower, _ascii(_text(value)))
        return found

    def getBodyFile(self):
        return BytesIO(self.body)

    def getSize(self) -> int:
        return len(self.body)

    def isMultipart(self) -> bool:
        """A multipart with parts (one stored without a boundary is shown as a single part)."""
        return self.headers.get_content_maintype() == "multipart" and bool(self.children())

    def getSubPart(self, part: int) -> "RawPart":
        return self.children()[part]

    def children(self) -> list["RawPart"]:
        if self._children is None:
            self._children = []
            boundary = self.headers.get_boundary() if self.headers.get_content_maintype() == "multipart" else None
            if boundary:
                delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r\n|$)")
                marks = list(delimiter.finditer(self.body))
                for opening, closing in zip(marks, marks[1:]):
                    self._children.append(RawPart(self.body[opening.end():closing.start()]))
        return self._children

    # Sections
    def section(self, path: tuple[int, ...]) -> "RawPart":
        """The entity a section number names (0-based); a non-multipart has only part 1."""
        entity = self
        for number in path:
            if entity.isMultipart():
                children = entity.children()
                if number >= len(children):
                    raise IndexError(number)
                entity = children[number]
            elif number != 0:
                raise IndexError(number)
        return entity

    def header_fields(self, names, negate: bool) -> bytes:
        """The raw header lines of these fields (or all others), then the blank line."""
        wanted = {(name.decode() if isinstance(name, bytes) else name).lower() for name in names}
        lines = [line for line in HEADER_LINE_START.split(self.header_bytes) if line]
        kept = [line for line in lines if (line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
                                           in wanted) != negate]
        return b"".join(kept) + b"\r\n"




def _params(part: RawPart, header: str) -> list[str] | None:
    """A header's parameters as IMAP's (key value ...) list, unquoted, RFC 2231 decoded,
    the values' case kept (Twisted's own builder lower-cases file names)."""
    params = part.headers.get_params(header=header) or []
    items: list[str] = []
    for key, value in params[1:]:
        if isinstance(value, tuple):
            value = collapse_rfc2231_value(value)
        items += [key.lower(), _ascii(_text(value))]
    return items or None


def _header(part: RawPart, name: str) -> str | None:
    value = part.headers.get(name)
    return _ascii(_text(value)) if value is not None else None


def body_structure(part: RawPart, extended: bool) -> list:
    """BODYSTRUCTURE (extended) or BODY for one entity, RFC 3501 7.4.2."""
    main, sub = part.headers.get_content_maintype(), part.headers.get_content_subtype()
    if part.isMultipart():
        result: list = [body_structure(child, extended) for child in part.children()] + [sub]
        if extended:
            result += [_params(part, "content-type"), _disposition(part), None, None]
        return result
    encoding = (_header(part, "content-transfer-encoding") or "7bit").lower()
    result = [main, sub, _params(part, "content-type"), _header(part, "content-id"),
              _header(part, "content-description"), encoding, len(part.body)]
    lines = part.body.count(b"\n") + (0 if part.body.endswith(b"\n") or not part.body else 1)
    if main == "text":
        result.append(lines)
    elif (main, sub) == ("message", "rfc822"):
        inner = RawPart(part.body)
        result += [getEnvelope(inner), body_structure(inner, extended), lines]
    if extended:
        result += [_header(part, "content-md5"), _disposition(part), None, None]
    return result


def _disposition(part: RawPart):
    value = part.headers.get("content-disposition")
    if value is None:
        return None
    kind = str(value).split(";", 1)[0].strip().lower()
    return [kind, _params(part, "content-disposition")]


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def internal_date(moment: datetime | None) -> bytes:
    moment = (moment or datetime(1970, 1, 1, tzinfo=timezone.utc))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (moment.day, MONTHS[moment.month - 1].encode(), moment.year,
                                                      moment.hour, moment.minute, moment.second)


def needs_body(query) -> bool:
    """Whether any fetch item needs the rebuilt bytes (sizes and dates are stored)."""
    return any(item.type in ("envelope", "bodystructure", "body", "rfc822", "rfc822header", "rfc822text")
               for item in query)


def section_name(item) -> bytes:
    """`BODY[1.2.HEADER.FIELDS (FROM)]` as the response names it (without a partial range)."""
    path = b".".join(b"%d" % (number + 1) for number in item.part)
    if item.header:
        inner = bytes(item.header)
    elif item.text:
        inner = b"TEXT"
    elif item.mime:
        inner = b"MIME"
    else:
        inner = b""
    section = path + (b"." if path and inner else b"") + inner
    return b"BODY[" + section + b"]"


def section_bytes(message: RawPart, item) -> bytes:
    entity = message.section(tuple(item.part))
    if item.header:
        fields = item.header.fields
        if fields:
            return entity.header_fields(fields, item.header.negate)
        return entity.header_bytes + b"\r\n"
    if item.text:
        return entity.body
    if item.mime:
        return entity.header_bytes + b"\r\n"
    if item.part:
        return entity.body if entity is not message else message.body
    return message.raw


def _whole(item) -> bool:
    """BODY[] or BODY.PEEK[] of the whole message, without a partial range."""
    return item.empty and not item.part and item.partialBegin is None


def body_item(message: RawPart, item) -> bytes:
    """One BODY[...] item with its partial range applied (RFC 3501 6.4.5)."""
    if not item.empty and not item.header and not item.text and not item.mime and not item.part:
        return b"BODY " + collapseNestedLists([body_structure(message, False)])
    try:
        data = section_bytes(message, item)
    except IndexError:
        data = b""
    name = section_name(item)
    if item.partialBegin is not None:
        begin = item.partialBegin
        data = data[begin:begin + item.partialLength]
        name += b"<%d>" % begin
    return name + b" " + literal(data)


def fetch_items(query, uid: int, flags: list[str], size: int, received_at, raw: bytes | None,
                with_uid: bool, with_flags: bool = False) -> list[bytes]:
    """The parenthesised FETCH data for one message, as pieces to write in order: the whole
    message is one piece as rebuilt, never copied (UID first for a UID FETCH; FLAGS added
    when with_flags, after an implicit \\Seen)."""
    parsed: list[RawPart] = []

    def message() -> RawPart:
        if not parsed:
            parsed.append(RawPart(raw))
        return parsed[0]

    items: list[list[bytes]] = []
    if with_uid and not any(item.type == "uid" for item in query):
        items.append([b"UID %d" % uid])
    for item in query:
        kind = item.type
        if kind == "uid":
            items.append([b"UID %d" % uid])
        elif kind == "flags":
            items.append([b"FLAGS (" + " ".join(flags).encode() + b")"])
        elif kind == "internaldate":
            items.append([b"INTERNALDATE " + internal_date(received_at)])
        elif kind == "rfc822size":
            items.append([b"RFC822.SIZE %d" % size])
        elif kind == "envelope":
            items.append([b"ENVELOPE " + collapseNestedLists([getEnvelope(message())])])
        elif kind == "bodystructure":
            items.append([b"BODYSTRUCTURE " + collapseNestedLists([body_structure(message(), True)])])
        elif kind == "body" and _whole(item):
            items.append([b"BODY[] {%d}\r\n" % len(raw), raw])
        elif kind == "body":
            items.append([body_item(message(), item)])
        elif kind == "rfc822":
            items.append([b"RFC822 {%d}\r\n" % len(raw), raw])
        elif kind == "rfc822header":
            items.append([b"RFC822.HEADER " + literal(message().header_bytes + b"\r\n")])
        elif kind == "rfc822text":
            items.append([b"RFC822.TEXT " + literal(message().body)])
    if with_flags and not any(item.type == "flags" for item in query):
        items.append([b"FLAGS (" + " ".join(flags).encode() + b")"])
    pieces = [b"("]
    for number, item_pieces in enumerate(items):
        if number:
            pieces.append(b" ")
        pieces.extend(item_pieces)
    pieces.append(b")")
    return pieces
