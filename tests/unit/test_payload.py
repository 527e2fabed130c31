"""Normalisation of ImprovMX payloads: every shape ImprovMX could send is understood or kept."""

import pytest

from improvmx_archive.payload import (
    accepts_domains, escape_keys, idempotency_key, make_snippet, normalise, parse_address,
    parse_address_list, unescape_keys,
)
from tests.payloads import eml_payload


@pytest.mark.parametrize("value, expected", [
    ({"name": "Ann", "email": "ann@example.com"}, {"name": "Ann", "email": "ann@example.com"}),
    ({"email": "ann@example.com"}, {"name": None, "email": "ann@example.com"}),
    ("Ann Example <ann@example.com>", {"name": "Ann Example", "email": "ann@example.com"}),
    ("ann@example.com", {"name": None, "email": "ann@example.com"}),
    ({"name": "no address"}, None),
    ("not an address", None),
    (42, None),
    (None, None),
])
def test_parse_address_shapes(value, expected):
    assert parse_address(value) == expected


def test_address_list_accepts_lists_strings_and_objects():
    found, ok = parse_address_list(["a@x.test", {"name": "B", "email": "b@x.test"}, "C <c@x.test>, d@x.test"])
    assert ok and [a["email"] for a in found] == ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
    found, ok = parse_address_list({"name": None, "email": "solo@x.test"})
    assert ok and found[0]["email"] == "solo@x.test"
    found, ok = parse_address_list([12, "x@y.test"])
    assert not ok and found == [{"name": None, "email": "x@y.test"}]


def test_real_message_derives_query_fields():
    message = normalise(eml_payload("alternative"))
    assert message.derived["from_email"] == "newsletter@shop.example"
    assert message.derived["to_emails"] == ["orders@archive.test", "bob@elsewhere.example"]
    assert set(message.derived["recipients"]) == {"orders@archive.test", "bob@elsewhere.example",
                                                  "carol@archive.test"}
    assert message.derived["subject_lower"].startswith("your order № 1234")
    assert message.derived["snippet"].startswith("Hello Orders, Your order № 1234")
    assert message.flags == []


def test_unknown_fields_are_kept_as_extra_and_strange_shapes_flagged():
    message = normalise({
        "from": ["not", "an", "address"], "to": "Ann <ann@x.test>", "cc": [1, 2],
        "headers": "oops", "subject": {"weird": True}, "envelope": {"recipient": "env@x.test"},
        "verdict": {"spam": "pass"}, "attachments": "nope",
    })
    assert message.extra["envelope"] == {"recipient": "env@x.test"}
    assert message.extra["verdict"] == {"spam": "pass"}
    assert message.extra["attachments"] == "nope"
    assert {"from_unparsed", "cc_unparsed", "headers_not_an_object", "subject_not_a_string",
            "attachments_not_a_list"} <= set(message.flags)
    assert "env@x.test" in message.derived["recipients"]
    assert message.derived["to_emails"] == ["ann@x.test"]


def test_delivered_to_header_counts_as_recipient_in_any_shape():
    for value in ("d@archive.test", {"name": None, "email": "d@archive.test"}, ["d@archive.test"]):
        message = normalise({"headers": {"delivered-to": value}, "subject": "x"})
        assert message.derived["recipients"] == ["d@archive.test"]


def test_domain_filter_matches_recipient_domains_and_subdomains():
    message = normalise({"to": [{"email": "a@Mail.Archive.Test"}]})
    assert accepts_domains(message, ())
    assert accepts_domains(message, ("archive.test",))
    assert accepts_domains(message, ("mail.archive.test",))
    assert not accepts_domains(message, ("other.test",))
    assert not accepts_domains(message, ("chive.test",))


def test_snippet_strips_html_and_scripts():
    assert make_snippet(None, "<style>p{}</style><p>Hi&nbsp;<b>there</b></p><script>x()</script>") == "Hi there"
    assert make_snippet("  ", None) == ""
    assert len(make_snippet("word " * 1000, None)) == 200


def test_escaped_keys_round_trip_and_are_storable():
    original = {"a.b": 1, "$where": {"x.y%": [{"$k": 2}]}, "nul\x00": 3, "plain": 4}
    escaped = escape_keys(original)
    flat = repr(escaped)
    assert "a.b" not in escaped and "$where" not in escaped and "\x00" not in flat
    assert unescape_keys(escaped) == original


def test_idempotency_key_ignores_timestamp_but_not_content():
    payload = eml_payload("attachments")
    message = normalise(payload)
    key = idempotency_key(message, ["d1"] * len(message.parts))
    assert key == idempotency_key(normalise({**payload, "timestamp": 1}), ["d1"] * len(message.parts))
    assert key != idempotency_key(normalise({**payload, "subject": "other"}), ["d1"] * len(message.parts))
    assert key != idempotency_key(message, ["d2"] * len(message.parts))


def test_snippet_skips_a_long_style_block_and_reads_only_what_it_needs():
    html = "<html><head><style>" + "p { color: red; }\n" * 200 + "</style></head><body><p>" + \
           "Hello there, " * 40 + "</p>" + "<p>more</p>" * 100_000 + "</body></html>"
    snippet = make_snippet(None, html)
    assert snippet.startswith("Hello there, Hello") and len(snippet) == 200 and "color" not in snippet
    assert make_snippet("short text", None) == "short text"
    assert make_snippet(None, "<p>tiny</p>") == "tiny"
