"""Webhook body parsing that leaves large base64 literals in the request buffer."""

import base64
import json
import os

import pytest

from improvmx_archive import body as body_module
from improvmx_archive.body import SpilledString, parse_json_body, plain
from tests.payloads import message_with_attachment


@pytest.fixture(autouse=True)
def spill_every_body(monkeypatch):
    """These tests look at spilling itself, whatever the body's size."""
    monkeypatch.setattr(body_module, "SPILL_BODY_MIN", 0)


def test_a_body_under_spill_body_min_is_parsed_whole(monkeypatch):
    monkeypatch.setattr(body_module, "SPILL_BODY_MIN", 1024 * 1024)
    payload = message_with_attachment(os.urandom(300_000))
    assert _parse(payload) == payload


def _parse(document, **dumps_options):
    return parse_json_body(bytearray(json.dumps(document, **dumps_options).encode()))


def test_large_attachment_content_stays_in_the_buffer_and_reads_back_exactly():
    payload = message_with_attachment(os.urandom(300_000))
    parsed = _parse(payload)
    content = parsed["attachments"][0]["content"]
    assert isinstance(content, SpilledString)
    assert content.text() == payload["attachments"][0]["content"]
    assert plain(parsed) == payload


@pytest.mark.parametrize("slice_bytes", [1, 2, 3, 7, 4096])
def test_escapes_cut_between_slices_are_unescaped(monkeypatch, slice_bytes):
    monkeypatch.setattr(body_module, "SPILL_THRESHOLD", 8)
    monkeypatch.setattr(body_module, "SLICE_BYTES", slice_bytes)
    value = "QUJD\nREVG/\r\nR0hJ\tSktM/" * 20
    parsed = parse_json_body(bytearray(json.dumps({"attachments": [{"content": value}]}).encode()))
    content = parsed["attachments"][0]["content"]
    assert isinstance(content, SpilledString) and b"".join(content.slices()).decode() == value


def test_escaped_slashes_as_some_encoders_write_them(monkeypatch):
    monkeypatch.setattr(body_module, "SPILL_THRESHOLD", 8)
    raw = b'{"attachments": [{"content": "ab\\/cd\\/ef\\/gh\\/"}]}'
    assert parse_json_body(bytearray(raw))["attachments"][0]["content"].text() == "ab/cd/ef/gh/"


def test_only_base64_like_values_in_parts_are_spilled(monkeypatch):
    monkeypatch.setattr(body_module, "SPILL_THRESHOLD", 8)
    document = {
        "text": "QUJDREVGR0hJSktM",  # base64-like but not a part: a plain str again
        "html": "<p>long enough html</p>",
        "extra": {"content": "QUJDREVGR0hJSktM"},
        "attachments": [{"content": "caf\u00e9 is not base64 at all"}, {"content": "QUJDREVGR0hJSktM"}],
        "QUJDREVGR0hJSktMTU5P": "key that looks like base64",
    }
    parsed = _parse(document)
    assert parsed["text"] == document["text"] and isinstance(parsed["text"], str)
    assert parsed["extra"] == {"content": "QUJDREVGR0hJSktM"} and isinstance(parsed["extra"]["content"], str)
    assert parsed["attachments"][0]["content"] == document["attachments"][0]["content"]
    assert isinstance(parsed["attachments"][1]["content"], SpilledString)
    assert plain(parsed) == document


def test_non_utf8_bodies_and_invalid_json_behave_like_json_loads():
    document = {"subject": "ünïcode", "attachments": [{"content": "QUJD" * 30_000}]}
    assert parse_json_body(bytearray(json.dumps(document).encode("utf-16"))) == document
    for broken in (b'{"a": "QUJD' + b"A" * 70_000, b"\xff\xfe\xfd", b'{"a": 1,}'):
        with pytest.raises(ValueError):
            parse_json_body(bytearray(broken))


def test_outage_spools_the_original_content(app, client, monkeypatch):
    from improvmx_archive.db import DatabaseUnavailable

    def unavailable(*args, **kwargs):
        raise DatabaseUnavailable("down")

    monkeypatch.setattr(app.extensions["archive"], "_ingest", unavailable)
    payload = message_with_attachment(os.urandom(200_000))
    response = client.post("/webhook", data=json.dumps(payload), content_type="application/json")
    assert response.status_code == 202
    spooled = app.extensions["spool"].directory / f"{response.get_json()['email_id']}.json"
    assert json.loads(spooled.read_text()) == payload
    monkeypatch.undo()
    app.extensions["spool"].replay(app.extensions["archive"])
    stored = app.extensions["archive"].find(response.get_json()["email_id"])
    data = base64.b64decode(payload["attachments"][0]["content"])
    assert stored["attachments"][0]["size"] == len(data)


@pytest.mark.parametrize("text", [
    'say \\"' + "QUJD" * 20_000 + '\\" twice',   # base64 after an escaped quote: still inside the text
    "\\\\" + "QUJD" * 20_000,                      # after an escaped backslash
    "QUJD" * 20_000 + " and then words",          # base64-like start, other characters later
], ids=["escaped-quote", "escaped-backslash", "mixed"])
def test_strings_that_only_look_like_base64_in_places_parse_exactly(text):
    raw = ('{"text": "' + text + '", "attachments": [{"content": "' + "QUJD\\n" * 20_000 + '"}]}').encode()
    parsed = parse_json_body(bytearray(raw))
    assert parsed["text"] == json.loads(raw)["text"]
    assert plain(parsed) == json.loads(raw)
