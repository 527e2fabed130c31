"""The archive API: listing, every filter, one message, downloads and the processed flag."""

from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from tests.payloads import eml_payload

FIXTURES = ("alternative", "inline_cid", "latin1", "attachments")


@pytest.fixture
def stored(app, client):
    """The four fixture messages stored in order; returns {fixture name: email id}."""
    ids = {}
    for name in FIXTURES:
        ids[name] = client.post("/webhook", json=eml_payload(name)).get_json()["email_id"]
    return ids


def _list(client, auth, query=""):
    response = client.get(f"/emails{query}", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_list_is_newest_first_with_summaries(client, auth, stored):
    body = _list(client, auth)
    assert body["success"] is True and body["count"] == 4 and body["total"] == 4
    assert [e["id"] for e in body["emails"]] == [stored[n] for n in reversed(FIXTURES)]
    first = body["emails"][0]
    assert "text" not in first and "html" not in first
    assert first["snippet"].startswith("Two scans with the same name")
    assert first["attachment_count"] == 6 and first["has_attachments"] is True
    assert first["attachments"][0]["url"] == f"/emails/{stored['attachments']}/attachments/0"
    assert "content" not in first["attachments"][0] and "blob_id" not in first["attachments"][0]
    assert first["received_at"].endswith("Z")
    assert not {"idempotency_key", "subject_lower", "recipients"} & set(first)


def test_pagination(client, auth, stored):
    page = _list(client, auth, "?limit=2&skip=1")
    assert page["count"] == 2 and page["total"] == 4
    assert [e["id"] for e in page["emails"]] == [stored["latin1"], stored["inline_cid"]]
    assert _list(client, auth, "?skip=10")["emails"] == []


@pytest.mark.parametrize("query, expected", [
    ("?from_email=NEWSLETTER@shop.example", ["alternative"]),
    ("?from_email=nobody@example.org", []),
    ("?to=carol@archive.test", ["alternative"]),
    ("?to=PHOTOS@archive.test", ["inline_cid"]),
    ("?subject=GRÜSSE", []),
    ("?subject=grüße", ["latin1"]),
    ("?subject=№ 1234", ["alternative"]),
    ("?subject=.*", []),
    ("?subject=(", []),
    ("?has_attachments=true", ["attachments"]),
    ("?has_attachments=false", ["latin1", "inline_cid", "alternative"]),
    ("?processed=false", ["attachments", "latin1", "inline_cid", "alternative"]),
    ("?processed=true", []),
])
def test_filters(client, auth, stored, query, expected):
    assert [e["id"] for e in _list(client, auth, query)["emails"]] == [stored[n] for n in expected]


def test_since_until_filter_on_received_at(app, client, auth, stored):
    emails = app.extensions["database"].emails
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    emails.update_one({"_id": ObjectId(stored["alternative"])}, {"$set": {"received_at": old}})
    assert [e["id"] for e in _list(client, auth, "?until=2026-06-01")["emails"]] == [stored["alternative"]]
    since = _list(client, auth, "?since=2026-06-01T00:00:00Z")["emails"]
    assert stored["alternative"] not in [e["id"] for e in since] and len(since) == 3
    window = _list(client, auth, "?since=2025-12-31T00:00:00%2B00:00&until=2026-01-02T00:00:00Z")
    assert [e["id"] for e in window["emails"]] == [stored["alternative"]]


@pytest.mark.parametrize("query, error", [
    ("?limit=0", "'limit' must be between 1 and 100"),
    ("?limit=101", "'limit' must be between 1 and 100"),
    ("?limit=ten", "'limit' must be an integer"),
    ("?skip=-1", "'skip' must be between 0 and 10000000"),
    ("?processed=maybe", "'processed' must be true or false"),
    ("?has_attachments=2", "'has_attachments' must be true or false"),
    ("?since=yesterday", "'since' must be an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z"),
    ("?since=2026-02-01&until=2026-01-01", "'since' must not be after 'until'"),
    ("?from_email=not-an-address", "'from_email' must be an email address"),
    ("?to=nobody", "'to' must be an email address"),
    ("?subject=" + "x" * 501, "'subject' must be at most 500 characters"),
])
def test_invalid_parameters_are_400(client, auth, query, error):
    response = client.get(f"/emails{query}", headers=auth)
    assert response.status_code == 400
    assert response.get_json() == {"success": False, "error": error}


def test_detail_has_bodies_and_download_urls(client, auth, stored):
    email = client.get(f"/emails/{stored['inline_cid']}", headers=auth).get_json()["email"]
    assert email["html"].startswith("<p>Look at this:</p>")
    assert email["inlines"][0]["cid"] == "pic1@example.org"
    assert email["inlines"][0]["url"] == f"/emails/{stored['inline_cid']}/attachments/0"
    latin = client.get(f"/emails/{stored['latin1']}", headers=auth).get_json()["email"]
    assert latin["text"] == "Grüße aus Köln! Der Preis beträgt 20 €."
    assert latin["from"]["name"] == "Jürgen Müller"


@pytest.mark.parametrize("email_id", ["nope", "0" * 24, "zzzzzzzzzzzzzzzzzzzzzzzz", "%00", "1" * 25])
def test_unknown_or_malformed_id_is_404_json(client, auth, stored, email_id):
    for path in (f"/emails/{email_id}", f"/emails/{email_id}/attachments/0", f"/emails/{email_id}/attachment/x"):
        response = client.get(path, headers=auth)
        assert response.status_code == 404
        assert response.get_json()["success"] is False
    patched = client.patch(f"/emails/{email_id}", json={"processed": True}, headers=auth)
    assert patched.status_code == 404


def test_downloads_by_position_and_by_name(client, auth, stored):
    email_id = stored["attachments"]
    first = client.get(f"/emails/{email_id}/attachments/0", headers=auth)
    second = client.get(f"/emails/{email_id}/attachments/1", headers=auth)
    assert first.data[:8] == second.data[:8] == b"\x89PNG\r\n\x1a\n" and first.data != second.data
    assert first.headers["Content-Type"] == "image/png"
    assert first.headers["X-Content-Type-Options"] == "nosniff"
    by_name = client.get(f"/emails/{email_id}/attachment/scan.png", headers=auth)
    assert by_name.data == first.data
    unnamed = client.get(f"/emails/{email_id}/attachments/2", headers=auth)
    assert unnamed.data == bytes(range(16))
    assert unnamed.headers["Content-Disposition"] == (
        "attachment; filename=\"file.bin\"; filename*=UTF-8''file.bin")  # named from its type
    csv = client.get(f"/emails/{email_id}/attachment/totals.csv", headers=auth)
    assert csv.data == "item,amount\ncafé,3.50".encode() and csv.mimetype == "text/csv"
    assert csv.headers["Content-Type"] == "text/csv; charset=utf-8"
    forwarded = client.get(f"/emails/{email_id}/attachments/4", headers=auth)
    assert forwarded.data.startswith(b"From: someone@example.net")
    assert client.get(f"/emails/{email_id}/attachments/6", headers=auth).status_code == 404
    assert client.get(f"/emails/{email_id}/attachment/missing.pdf", headers=auth).status_code == 404


def test_inline_found_by_name_and_by_content_id(client, auth, stored):
    email_id = stored["inline_cid"]
    by_name = client.get(f"/emails/{email_id}/attachment/pixel.png", headers=auth)
    by_cid = client.get(f"/emails/{email_id}/attachment/pic1@example.org", headers=auth)
    assert by_name.status_code == by_cid.status_code == 200 and by_name.data == by_cid.data


def test_svg_and_html_always_download_with_safe_names(client, auth, stored):
    svg = client.get(f"/emails/{stored['attachments']}/attachments/5", headers=auth)
    assert svg.headers["Content-Disposition"] == (
        "attachment; filename=\"_evil_.svg\"; filename*=UTF-8''%22evil%22.svg")
    assert svg.headers["Content-Type"] == "image/svg+xml"
    assert "sandbox" in svg.headers["Content-Security-Policy"]


def test_content_disposition_for_hostile_names(client, auth):
    names = ["a\r\nSet-Cookie: x=1.html", "..\\..\\win.ini", "résumé 2026.pdf", "", "日本語.txt", "\x00\x07"]
    payload = {"subject": "names", "attachments": [
        {"type": "text/html", "name": name, "content": "<b>x</b>"} for name in names]}
    email_id = client.post("/webhook", json=payload).get_json()["email_id"]
    expected = [
        "attachment; filename=\"aSet-Cookie: x=1.html\"; filename*=UTF-8''aSet-Cookie%3A%20x%3D1.html",
        "attachment; filename=\"win.ini\"; filename*=UTF-8''win.ini",
        "attachment; filename=\"rsum 2026.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202026.pdf",
        "attachment; filename=\"message.html\"; filename*=UTF-8''message.html",
        "attachment; filename=\".txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt",
        "attachment; filename=\"message.html\"; filename*=UTF-8''message.html",
    ]
    for position, disposition in enumerate(expected):
        response = client.get(f"/emails/{email_id}/attachments/{position}", headers=auth)
        assert response.headers["Content-Disposition"] == disposition
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"


def test_bogus_content_type_is_served_as_octet_stream(client, auth):
    payload = {"subject": "t", "attachments": [{"type": "text/html\r\nX-Evil: 1", "name": "a", "content": "QUJD"}]}
    email_id = client.post("/webhook", json=payload).get_json()["email_id"]
    response = client.get(f"/emails/{email_id}/attachments/0", headers=auth)
    assert response.headers["Content-Type"] == "application/octet-stream" and "X-Evil" not in response.headers


def test_patch_marks_processed_and_filter_follows(client, auth, stored):
    email_id = stored["latin1"]
    response = client.patch(f"/emails/{email_id}", json={"processed": True}, headers=auth)
    body = response.get_json()
    assert response.status_code == 200 and body["processed"] is True and body["id"] == email_id
    assert datetime.fromisoformat(body["processed_at"]) > datetime.now(timezone.utc) - timedelta(minutes=1)
    assert [e["id"] for e in _list(client, auth, "?processed=true")["emails"]] == [email_id]
    undone = client.patch(f"/emails/{email_id}", json={"processed": False}, headers=auth).get_json()
    assert undone["processed"] is False and undone["processed_at"] is None


@pytest.mark.parametrize("body", [None, [], {"processed": "yes"}, {"processed": 1}, {"processed": True, "x": 1}, {},
                                  {"hold": "true"}, {"hold": None}, {"processed": True, "hold": 0}])
def test_patch_rejects_anything_but_booleans(client, auth, stored, body):
    kwargs = {"json": body} if body is not None else {"data": "nope", "content_type": "application/json"}
    response = client.patch(f"/emails/{stored['latin1']}", headers=auth, **kwargs)
    assert response.status_code == 400
    assert response.get_json() == {"success": False,
                                   "error": 'Body must be a JSON object with "processed" and/or "hold", '
                                            'each true or false, e.g. {"processed": true}'}


def test_unknown_path_and_wrong_method_are_json(client, auth):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.get_json() == {"success": False, "error": "Not found"}
    wrong = client.delete("/emails", headers=auth)
    assert wrong.status_code == 405
    assert wrong.get_json() == {"success": False, "error": "Method not allowed"}
    assert "GET" in wrong.headers["Allow"]


def test_subject_search_finds_very_long_subjects(client, auth):
    import random
    words = ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for i in range(600)]
    subject = " ".join(words) + " needle-phrase"
    email_id = client.post("/webhook", json={"subject": subject, "text": "x"}).get_json()["email_id"]
    client.post("/webhook", json={"subject": "short and unrelated", "text": "y"})
    found = _list(client, auth, "?subject=NEEDLE-phrase")["emails"]
    assert [e["id"] for e in found] == [email_id]
    assert [e["id"] for e in _list(client, auth, "?subject=ne")["emails"]] == [email_id]


def test_download_with_a_missing_chunk_fails_instead_of_sending_wrong_bytes(app, client, auth):
    from tests.payloads import message_with_attachment
    import os
    email_id = client.post("/webhook", json=message_with_attachment(os.urandom(3 * 1024 * 1024))).get_json()["email_id"]
    app.extensions["database"]["blobs.chunks"].delete_one({"n": 1})
    with pytest.raises(Exception, match="chunk 1 missing"):
        client.get(f"/emails/{email_id}/attachments/0", headers=auth).get_data()


def test_scripts_reading_the_original_guides_underscore_id_still_work(client, auth, sample_payload):
    """The original guide's answers named the id `_id`; ours prefers `id` and sends both."""
    email_id = client.post("/webhook", json=sample_payload).get_json()["email_id"]
    item = client.get("/emails", headers=auth).get_json()["emails"][0]
    detail = client.get(f"/emails/{item['_id']}", headers=auth).get_json()["email"]
    assert item["id"] == item["_id"] == detail["id"] == detail["_id"] == email_id
