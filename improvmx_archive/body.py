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
# Below this a body is parsed whole by json.loads (C, fast): its copies cost little memory,
# while the literal scan and the unescaping in Python would cost most of the time of a
# typical message. It matches the default LARGE_BODY_MB, above which bodies are admitted a
# few at a time per host (admission.py).
SPILL_BODY_MIN = 8 * 1024 * 1024
SLICE_BYTES = 1024 * 1024
# A JSON string literal; outside strings JSON has no '"', so scanning from the start finds
# exactly the string tokens.
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
# Where a base64-like literal can start: a quote, then base64 or one of the escapes below.
_BASE64_LIKE_START = re.compile(rb'"(?=[A-Za-z0-9+/=]|\\[nrt/])')
# The rest of such a literal up to its closing quote, when it holds only base64 and the
# escapes JSON encoders write for line breaks and (some) slashes.
_BASE64_LIKE_REST = re.compile(rb"(?:[A-Za-z0-9+/=]++|\\[nrt/])*+\"")
_OBJECT_KEY_END = re.compile(rb"[ \t\r\n]*+:")  # after a literal: it was an object key
_NEWLINE = (b"\\n", b"\n")
_ESCAPES = (_NEWLINE, (b"\\r", b"\r"), (b"\\t", b"\t"), (b"\\/", b"/"))
BACKSLASH = 0x5C


class SpilledString:
    """A JSON string value still in the request buffer, in its escaped form."""

    __slots__ = ("raw", "escapes")

    def __init__(self, raw: memoryview, escapes: tuple[tuple[bytes, bytes], ...] = _ESCAPES):
        self.raw = raw
        self.escapes = escapes  # the ones that occur: each costs a pass over every slice

    def slices(self) -> Iterator[bytes]:
        """The string's bytes (ASCII, so also its UTF-8), unescaped a slice at a time."""
        carry = b""
        for start in range(0, len(self.raw), SLICE_BYTES):
            piece = carry + bytes(self.raw[start:start + SLICE_BYTES])
            carry = b""
            if piece.endswith(b"\\"):  # an escape cut in two: finish it with the next slice
                piece, carry = piece[:-1], b"\\"
            for escaped, plain in self.escapes:
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
    if len(body) < SPILL_BODY_MIN:
        return _loads(body, **loads_options)
    if json.detect_encoding(body) != "utf-8":
        return _loads(bytes(body), **loads_options)
    token = secrets.token_hex(8)
    spilled: dict[str, SpilledString] = {}
    pieces: list[bytes] = []
    view = memoryview(body)
    kept_until = 0
    for start, end in _long_base64_literals(body):
        placeholder = f"\\u0000{token}:{len(spilled)}"
        spilled[f"\x00{token}:{len(spilled)}"] = SpilledString(view[start + 1:end - 1],
                                                                _escapes_in(body, start, end))
        pieces += [bytes(view[kept_until:start]), b'"', placeholder.encode(), b'"']
        kept_until = end
    if not spilled:
        return _loads(body.decode("utf-8", "surrogatepass"), **loads_options)
    pieces.append(bytes(view[kept_until:]))
    return _restore(_loads(b"".join(pieces).decode("utf-8", "surrogatepass"), **loads_options), spilled)


def _long_base64_literals(body: bytearray) -> Iterator[tuple[int, int]]:
    """(start, end), quotes included, of every string value of at least SPILL_THRESHOLD
    base64-like characters. The regexes run over the long literals at C speed; only the
    other strings that start like base64 cost a Python step each.

    A candidate quote preceded by an odd run of backslashes is an escaped quote inside some
    string; any other one followed by base64 opens a string (in JSON a closing quote is
    followed by punctuation or space)."""
    position = 0
    while candidate := _BASE64_LIKE_START.search(body, position):
        start = candidate.start()
        if _escaped(body, start):
            position = start + 1
            continue
        rest = _BASE64_LIKE_REST.match(body, start + 1)
        if rest is None:  # other characters follow: a string of another kind, skipped whole
            literal = _STRING_LITERAL.match(body, start)
            position = literal.end() if literal else start + 1
            continue
        position = end = rest.end()
        if end - start - 2 >= SPILL_THRESHOLD and not _OBJECT_KEY_END.match(body, end):
            yield start, end


def _escaped(body: bytearray, index: int) -> bool:
    run = 0
    while index - run > 0 and body[index - run - 1] == BACKSLASH:
        run += 1
    return run % 2 == 1


def _escapes_in(body: bytearray, start: int, end: int) -> tuple[tuple[bytes, bytes], ...]:
    """The escapes a base64-like literal uses: nearly always line breaks alone."""
    if body.count(b"\\", start, end) == body.count(b"\\n", start, end):
        return (_NEWLINE,)
    return _ESCAPES


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
