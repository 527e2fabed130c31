"""Decoding of part content: streamed base64, text parts, and malformed content kept as received."""

import base64
import hashlib
import os

import pytest

from improvmx_archive import parts
from improvmx_archive.parts import MODE_BASE64, MODE_RAW, MODE_TEXT, inspect_part
from improvmx_archive.payload import Part


def _part(content, type_="application/pdf", encoding=None):
    raw = {"type": type_, "name": "f", "content": content}
    if encoding:
        raw["encoding"] = encoding
    return Part("attachments", 0, raw)


def _bytes(part):
    info = inspect_part(part)
    return info, b"".join(info.slices(part.content))


def test_wrapped_base64_decodes_to_exact_bytes(monkeypatch):
    monkeypatch.setattr(parts, "SLICE_CHARS", 7)  # force many slices, with carries between them
    data = os.urandom(1000)
    wrapped = "\r\n".join(base64.encodebytes(data).decode().split("\n"))
    info, decoded = _bytes(_part(wrapped))
    assert info.mode == MODE_BASE64 and decoded == data
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert info.flags == []


@pytest.mark.parametrize("content", [
    "not base64 at all!", "QUJD", "QUJDRA", "QUJDRA=", "QU=JD", "", "   ",
])
def test_invalid_base64_is_kept_exactly_as_received_and_flagged(content):
    info, stored = _bytes(_part(content))
    if content == "QUJD":
        assert info.mode == MODE_BASE64 and stored == b"ABC"
        return
    assert info.mode == MODE_RAW and "invalid_base64" in info.flags
    assert stored == content.encode()


def test_text_parts_sent_unencoded_are_stored_as_utf8():
    info, stored = _bytes(_part("item,amount\ncafé,3.50", "text/csv", "quoted-printable"))
    assert info.mode == MODE_TEXT and stored == "item,amount\ncafé,3.50".encode()
    info, stored = _bytes(_part("From: a@b\n\nbody", "message/rfc822"))
    assert info.mode == MODE_TEXT and stored == b"From: a@b\n\nbody"


def test_text_part_declared_base64_is_decoded():
    info, stored = _bytes(_part(base64.b64encode(b"hello").decode(), "text/plain", "base64"))
    assert info.mode == MODE_BASE64 and stored == b"hello"


def test_lone_surrogates_survive():
    info, stored = _bytes(_part("bad \ud800 text", "text/plain"))
    assert stored.decode("utf-8", "surrogatepass") == "bad \ud800 text"


@pytest.mark.parametrize("content, flag", [(None, "content_missing"), ({"x": 1}, "content_not_a_string"),
                                           (["a"], "content_not_a_string")])
def test_missing_or_odd_content_is_flagged_not_refused(content, flag):
    info, stored = _bytes(_part(content))
    assert info.mode == MODE_RAW and flag in info.flags
    assert stored == (b"" if content is None else stored)
