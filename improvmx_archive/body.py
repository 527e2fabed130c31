"""Parse a webhook body without holding a large payload two or three times over.

Nearly all of a large ImprovMX payload is base64 attachment content in a few huge JSON string
literals. Those literals stay where they are in the request buffer and are read from it
through memoryviews (SpilledString); only the small rest of the document goes through
json.loads. A 70 MB body then costs about one copy instead of three.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Iterator

from .payload import MAX_JSON_DEPTH, nesting_depth, rebuild

SPILL_THRESHOLD = 64 * 1024  # literals at least this long are left in the buffer
SLICE_BYTES = 1024 * 1024
# A JSON string literal; outside strings JSON has no '"', so scanning from the start finds
# exactly the string tokens.
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
# What base64 content looks like inside a JSON literal: its alphabet plus the escapes JSON
# encoders write for line breaks and (some) slashes.
_BASE64_LIKE = re.compile(rb"(?:[A-Za-z0-9+/=]++|\\[nrt/])*+")
_OBJECT_KEY_END = re.compile(rb"[ \t\r\n]*+:")  # after a literal: it was an object key
_ESCAPES = ((b"\\n", b"\n"), (b"\\r", b"\r"), (b"\\t", b"\t"), (b"\\/", b"/"))


class SpilledString:
    """A JSON string value still in the request buffer, in its escaped form."""

    __slots__ = ("raw",)

    def __init__(self, raw: memoryview):
        self.raw = raw

    def slices(self) -> Iterator[bytes]:
        """The string's bytes (ASCII, so also its UTF-8), unescaped a slice at a time."""
        carry = b""
        for start in range(0, len(self.raw), SLICE_BYTES):
            piece = carry + bytes(self.raw[start:start + SLICE_BYTES])
            carry = b""
            if piece.endswith(b"\\"):  # an escape cut in two: finish it with the next slice
                piece, carry = piece[:-1], b"\\"
            for escaped, plain in _ESCAPES:
                piece = piece.replace(escaped, plain)
            yield piece

    def __len__(self) -> int:
        return len(self.raw)

    def text(self) -> str:
        return b"".join(self.slices()).decode("ascii")


class NestedTooDeeply(ValueError):
    """The JSON nests lists and objects more than MAX_JSON_DEPTH levels deep."""


def _loads(text: str | bytes, **loads_options: Any) -> Any:
    """json.loads, with nesting past MAX_JSON_DEPTH refused (the C parser itself gives up
    with RecursionError near the interpreter's recursion limit)."""
    try:
        value = json.loads(text, **loads_options)
    except RecursionError:
        raise NestedTooDeeply() from None
    if nesting_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise NestedTooDeeply()
    return value


def parse_json_body(body: bytearray, **loads_options: Any) -> Any:
    """json.loads(body), except that long base64-like string values come back as
    SpilledString objects reading from `body` (which must then stay unmodified).

    Raises ValueError (UnicodeDecodeError included) for anything that is not JSON, and its
    subclass NestedTooDeeply for JSON nested past MAX_JSON_DEPTH.
    """
    if json.detect_encoding(body) != "utf-8":
        return _loads(bytes(body), **loads_options)
    token = secrets.token_hex(8)
    spilled: dict[str, SpilledString] = {}
    pieces: list[bytes] = []
    view = memoryview(body)
    kept_until = 0
    for literal in _STRING_LITERAL.finditer(body):
        start, end = literal.span()
        if (end - start - 2 < SPILL_THRESHOLD or _OBJECT_KEY_END.match(body, end)
                or not _BASE64_LIKE.fullmatch(body, start + 1, end - 1)):
            continue
        placeholder = f"\\u0000{token}:{len(spilled)}"
        spilled[f"\x00{token}:{len(spilled)}"] = SpilledString(view[start + 1:end - 1])
        pieces += [bytes(view[kept_until:start]), b'"', placeholder.encode(), b'"']
        kept_until = end
    if not spilled:
        return _loads(body.decode("utf-8", "surrogatepass"), **loads_options)
    pieces.append(bytes(view[kept_until:]))
    return _restore(_loads(b"".join(pieces).decode("utf-8", "surrogatepass"), **loads_options), spilled)


def _restore(payload: Any, spilled: dict[str, SpilledString]) -> Any:
    """Put the spilled values back: part content stays a SpilledString, anything else (a
    long base64-like value elsewhere) becomes a str again."""
    if isinstance(payload, dict):
        for kind in ("attachments", "inlines"):
            for part in payload.get(kind) or []:
                if isinstance(part, dict) and isinstance(part.get("content"), str) and part["content"] in spilled:
                    part["content"] = spilled[part["content"]]
    return rebuild(payload, leaf=lambda item: spilled[item].text()
                   if isinstance(item, str) and item in spilled else item)


def plain(value: Any) -> Any:
    """The payload with every SpilledString turned back into a str (to write it elsewhere)."""
    return rebuild(value, leaf=lambda item: item.text() if isinstance(item, SpilledString) else item)
