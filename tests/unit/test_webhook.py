"""POST /webhook: what is stored, what is refused, and that a retry lands once."""

import base64
import hashlib
import json
import os
import threading

import pytest

from improvmx_archive.db import DatabaseUnavailable
from improvmx_archive.parts import INLINE_PART_LIMIT
from tests.payloads import eml_payload, message_with_attachment


def _post(client, payload, **kwargs):
    return client.post("/webhook", data=json.dumps(payload), content_type="application/json", **kwargs)


def _stored(app, email_id):
    from bson import ObjectId
    return app.extensions["database"].emails.find_one({"_id": ObjectId(email_id)})


def test_stores_message_and_answers_like_the_guide(app, client, sample_payload):
    response = _post(client, sample_payload)
    body = response.get_json()
    assert response.status_code == 200
    assert body["success"] is True and body["message"] == "Email received and stored"
    assert body["duplicate"] is False and len(body["email_id"]) == 24
    document = _stored(app, body["email_id"])
    assert document["subject"] == sample_payload["subject"]
    assert document["processed"] is False and document["received_at"].tzinfo is not None
    assert document["headers"]["Mime-Version"] == "1.0"
    assert document["message-id"] == sample_payload["message-id"]
    assert "content" not in json.dumps(document["attachments"], default=str)


def test_retry_returns_same_id_and_stores_nothing_new(app, client):
    payload = eml_payload("attachments")
    first = _post(client, payload).get_json()
    blobs_before = app.extensions["database"]["blobs.files"].count_documents({})
    again = _post(client, {**payload, "timestamp": payload["timestamp"] + 5})
    assert again.status_code == 200
    assert again.get_json() == {"success": True, "message": "Email already stored",
                                "email_id": first["email_id"], "duplicate": True}
    assert app.extensions["database"].emails.count_documents({}) == 1
    assert app.extensions["database"]["blobs.files"].count_documents({}) == blobs_before


def test_concurrent_retries_store_one_message(app):
    payload = eml_payload("alternative")
    results = []

    def deliver():
        results.append(app.test_client().post("/webhook", json=payload).get_json())

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r["email_id"] for r in results}) == 1
    assert sum(not r["duplicate"] for r in results) == 1
    assert app.extensions["database"].emails.count_documents({}) == 1


@pytest.mark.parametrize("body, message", [
    (b"", "Request body is empty; expected the ImprovMX JSON payload"),
    (b"   \n", "Request body is empty; expected the ImprovMX JSON payload"),
    (b"{not json", "Request body is not valid JSON"),
    (b"\xff\xfe\x00garbage", "Request body is not valid JSON"),
    (b"[1, 2]", "Request body must be a JSON object"),
    (b"\"text\"", "Request body must be a JSON object"),
    (b"null", "Request body must be a JSON object"),
    (b"{}", "Request body is an empty JSON object"),
])
def test_refuses_only_what_cannot_be_stored(client, body, message):
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"success": False, "error": message}


def test_accepts_body_without_json_content_type(client, sample_payload):
    response = client.post("/webhook", data=json.dumps(sample_payload), content_type="text/plain")
    assert response.status_code == 200


def test_every_plausible_shape_is_archived_and_flagged(app, client):
    payload = {
        "from": "Plain String <plain@example.org>",
        "to": "first@archive.test, Second <second@archive.test>",
        "cc": None, "subject": None, "text": None, "html": None, "date": None,
        "headers": {"X-List": ["a", "b"], "X-Obj": {"name": "n", "email": "e@x.test"}, "X.Dotted": "v",
                    "$weird": "w"},
        "envelope": {"sender": "bounce@example.org", "recipients": ["env@archive.test"]},
        "verdict": {"spam": "PASS"},
        "attachments": [
            {"type": "application/pdf", "content": "%%% not base64 %%%", "name": "broken.pdf"},
            {"type": "application/pdf", "content": "", "name": "empty.pdf"},
            {"type": "application/octet-stream", "content": None},
            "not an object",
        ],
        "inlines": [{"type": "image/png", "content": "iVBORw0K", "cid": "c1"}],
    }
    response = _post(client, payload)
    assert response.status_code == 200, response.get_json()
    document = _stored(app, response.get_json()["email_id"])
    assert document["from_email"] == "plain@example.org"
    assert document["to_emails"] == ["first@archive.test", "second@archive.test"]
    assert "env@archive.test" in document["recipients"]
    assert document["extra"]["verdict"] == {"spam": "PASS"}
    assert document["headers"]["X%2EDotted"] == "v" and document["headers"]["%24weird"] == "w"
    flags = [a.get("flags", []) for a in document["attachments"]]
    assert flags == [["invalid_base64"], ["invalid_base64"], ["content_missing"],
                     ["part_not_an_object", "invalid_base64"]]
    assert document["inlines"][0]["cid"] == "c1" and document["inlines"][0]["stored_as"] == "base64"

    detail = client.get(f"/emails/{document['_id']}", headers={"Authorization": "Bearer test-key-0123456789abcdef"})
    shown = detail.get_json()["email"]
    assert shown["headers"]["X.Dotted"] == "v" and shown["headers"]["$weird"] == "w"
    broken = client.get(f"/emails/{document['_id']}/attachments/0",
                        headers={"Authorization": "Bearer test-key-0123456789abcdef"})
    assert broken.data == b"%%% not base64 %%%"


def test_large_attachment_round_trips_byte_for_byte(app, client, auth):
    data = os.urandom(40 * 1024 * 1024)
    payload = message_with_attachment(data, filename="archive.tar")
    response = _post(client, payload)
    assert response.status_code == 200
    email_id = response.get_json()["email_id"]
    download = client.get(f"/emails/{email_id}/attachments/0", headers=auth)
    assert download.status_code == 200
    assert download.headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(download.data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_repeated_attachment_is_stored_once(app, client):
    data = os.urandom(INLINE_PART_LIMIT + 1)  # a smaller one rides in its message document
    for subject in ("first", "second", "third"):
        assert _post(client, message_with_attachment(data, subject=subject)).status_code == 200
    database = app.extensions["database"]
    assert database.emails.count_documents({}) == 3
    assert database["blobs.files"].count_documents({"metadata.sha256": hashlib.sha256(data).hexdigest()}) == 1


def test_huge_text_body_goes_to_gridfs_and_reads_back(app, client, auth):
    text = "line of text\n" * 1_400_000  # ~18 MB: alone over MongoDB's 16 MB cap
    payload = {"subject": "huge body", "text": text, "to": [{"email": "a@archive.test"}]}
    response = _post(client, payload)
    assert response.status_code == 200
    email_id = response.get_json()["email_id"]
    assert _stored(app, email_id)["text"] is None
    assert client.get(f"/emails/{email_id}", headers=auth).get_json()["email"]["text"] == text


def test_domain_filter_refuses_foreign_recipients(make_app, sample_payload):
    client = make_app(DOMINIO="archive.test, other.test", RATELIMIT_ENABLED="false").test_client()
    refused = _post(client, {**sample_payload, "to": [{"email": "x@elsewhere.example"}], "headers": {}})
    assert refused.status_code == 422
    assert refused.get_json() == {"success": False,
                                  "error": "No recipient is in a domain this archive accepts (DOMINIO)"}
    accepted = _post(client, {**sample_payload, "to": [{"email": "x@elsewhere.example"}],
                              "cc": [{"email": "y@archive.test"}]})
    assert accepted.status_code == 200
    via_delivered_to = _post(client, {"subject": "s", "headers": {"Delivered-To": "z@other.test"}})
    assert via_delivered_to.status_code == 200


@pytest.fixture
def ingest_raises(app, monkeypatch):
    """Make every ingest raise the given exception, as a failing database would."""

    def arrange(error: Exception):
        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(app.extensions["archive"], "_ingest", fail)

    return arrange


def test_outage_spools_and_answers_202(app, client, sample_payload, ingest_raises):
    ingest_raises(DatabaseUnavailable("ServerSelectionTimeoutError"))
    response = _post(client, sample_payload)
    assert response.status_code == 202
    body = response.get_json()
    assert body["spooled"] is True and body["success"] is True
    spooled = app.extensions["spool"].directory / f"{body['email_id']}.json"
    assert json.loads(spooled.read_text()) == sample_payload


def test_outage_with_unwritable_spool_answers_503(app, client, sample_payload, ingest_raises, monkeypatch,
                                                  tmp_path):
    ingest_raises(DatabaseUnavailable("ServerSelectionTimeoutError"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setattr(app.extensions["spool"], "directory", blocker / "spool")
    response = _post(client, sample_payload)
    assert response.status_code == 503
    assert response.get_json() == {"success": False, "error": "Storage temporarily unavailable; retry later"}
    assert response.headers["Retry-After"] == "60"


def test_oversize_body_is_413_json(make_app):
    client = make_app(MAX_BODY_MB="1", RATELIMIT_ENABLED="false").test_client()
    response = client.post("/webhook", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                           content_type="application/json")
    assert response.status_code == 413
    assert response.get_json() == {"success": False, "error": "Request body too large"}


def test_unexpected_archive_error_keeps_the_mail_in_the_spool(app, client, sample_payload, ingest_raises, caplog):
    """A bug or an unexpected MongoDB refusal must not make ImprovMX drop the message."""
    ingest_raises(RuntimeError("internal detail with mail content"))
    response = _post(client, sample_payload)
    assert response.status_code == 202 and response.get_json()["spooled"] is True
    assert len(app.extensions["spool"].pending()) == 1
    assert "archiving failed (RuntimeError at test_webhook.py:" in caplog.text
    assert "mail content" not in caplog.text


def test_unexpected_error_elsewhere_is_a_json_500_without_internals(app, client, auth, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail mongodb://user:pass@host")

    monkeypatch.setattr(app.extensions["archive"], "list_page", broken)
    response = client.get("/emails", headers=auth)
    assert response.status_code == 500
    assert response.get_json() == {"success": False, "error": "Internal server error"}
    assert b"secret" not in response.data


def test_content_as_base64_of_text_part_declared_base64(app, client, auth):
    payload = {"subject": "b64 text", "attachments": [
        {"type": "text/plain", "name": "note.txt", "encoding": "base64",
         "content": base64.b64encode("héllo".encode()).decode()}]}
    email_id = _post(client, payload).get_json()["email_id"]
    download = client.get(f"/emails/{email_id}/attachment/note.txt", headers=auth)
    assert download.data == "héllo".encode()


def test_lone_surrogates_from_malformed_mail_are_stored_replaced_and_flagged(app, client, auth):
    body = '{"subject": "broken \\udc00 header", "headers": {"X-\\ud800": "v\\udfff"}, "text": "ok"}'
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 200
    email = client.get(f"/emails/{response.get_json()['email_id']}", headers=auth).get_json()["email"]
    assert email["subject"] == "broken \ufffd header" and email["headers"] == {"X-\ufffd": "v\ufffd"}
    assert "lone_surrogates_replaced" in email["flags"]
    again = client.post("/webhook", data=body, content_type="application/json").get_json()
    assert again["duplicate"] is True


def test_first_ingest_creates_the_unique_index_start_up_could_not(app, client, sample_payload):
    """Started while MongoDB was down, the app has no idempotency index: the first ingest
    creates it before inserting, so concurrent retries cannot both land."""
    emails = app.extensions["database"].emails
    emails.drop_indexes()
    app.extensions["archive"]._indexes_ready = False
    assert client.post("/webhook", json=sample_payload).status_code == 200
    assert emails.index_information()["idempotency_key_unique"]["unique"] is True
