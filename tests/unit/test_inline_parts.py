"""Small parts ride in the message document (one durable write for a typical message);
large ones go to GridFS, kept once; both read back alike, and a message never passes the
16 MB document cap however its bytes are split."""

import base64
import hashlib
import os

import bson
import mongomock
import pytest

from improvmx_archive.archive import DOCUMENT_LIMIT
from improvmx_archive.parts import INLINE_DATA, INLINE_PART_LIMIT
from tests.payloads import message_with_attachment


@pytest.fixture
def calls(monkeypatch):
    """Every write and lookup the archive sends, as (method, collection)."""
    seen = []
    for method in ("find_one", "find", "insert_one", "insert_many", "find_one_and_update", "update_many"):
        original = getattr(mongomock.collection.Collection, method)

        def recording(self, *args, _original=original, _method=method, **kwargs):
            seen.append((_method, self.name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, method, recording)
    return seen


def test_a_typical_message_is_one_insert(app, client, sample_payload, calls):
    app.extensions["archive"].ensure_indexes()
    response = client.post("/webhook", json=sample_payload)
    assert response.status_code == 200 and response.get_json()["duplicate"] is False
    assert [call for call in calls if call[1].startswith(("emails", "blobs"))] == [("insert_one", "emails")]


def test_a_retry_of_an_all_inline_message_is_caught_by_the_unique_index(app, client, sample_payload):
    first = client.post("/webhook", json=sample_payload).get_json()
    again = client.post("/webhook", json={**sample_payload, "timestamp": 1}).get_json()
    assert again["duplicate"] is True and again["email_id"] == first["email_id"]
    assert app.extensions["database"].emails.count_documents({}) == 1


def test_inline_parts_download_like_gridfs_ones_and_never_show_their_bytes(app, client, auth):
    small, large = os.urandom(1000), os.urandom(INLINE_PART_LIMIT + 1)
    payload = message_with_attachment(large)
    payload["attachments"].append({"name": "small.bin", "type": "application/octet-stream",
                                   "encoding": "base64", "content": base64.b64encode(small).decode()})
    email_id = client.post("/webhook", json=payload).get_json()["email_id"]
    stored = app.extensions["database"].emails.find_one()
    assert [INLINE_DATA in r for r in stored["attachments"]] == [False, True]
    assert len(stored["blob_ids"]) == 1
    detail = client.get(f"/emails/{email_id}", headers=auth).get_json()["email"]
    listed = client.get("/emails", headers=auth).get_json()["emails"][0]
    for shown in (detail["attachments"], listed["attachments"]):
        assert all(INLINE_DATA not in part and "blob_id" not in part for part in shown)
    for part, data in zip(detail["attachments"], (large, small)):
        download = client.get(part["url"], headers=auth)
        assert download.status_code == 200 and download.data == data
        assert download.headers["Content-Length"] == str(len(data))
        assert download.headers["X-Content-SHA256"] == hashlib.sha256(data).hexdigest()


def test_parts_past_the_inline_budget_go_to_gridfs_in_batches(app, client, auth, calls):
    """Past INLINE_TOTAL_LIMIT small parts go to GridFS together, a few batched writes in
    all rather than round trips per part (tests/integration has the 50,000-part case)."""
    parts = [{"name": f"p{n}.bin", "type": "application/octet-stream", "encoding": "base64",
              "content": base64.b64encode(n.to_bytes(4, "big") * 2500).decode()} for n in range(1000)]
    payload = {"subject": "many parts", "to": [{"email": "a@archive.test"}], "attachments": parts}
    response = client.post("/webhook", json=payload)
    assert response.status_code == 200, response.get_json()
    assert len([call for call in calls if call[1].startswith("blobs")]) < 10
    stored = app.extensions["database"].emails.find_one()
    in_gridfs = [r for r in stored["attachments"] if "blob_id" in r]
    assert 0 < len(in_gridfs) < 1000 and len(stored["blob_ids"]) == len(in_gridfs)
    email_id = response.get_json()["email_id"]
    for position in (0, 999):
        assert client.get(f"/emails/{email_id}/attachments/{position}", headers=auth).data == \
            position.to_bytes(4, "big") * 2500


def test_a_document_over_the_cap_moves_inline_parts_out_before_headers(app, client):
    headers = {f"X-Filler-{n}": "h" * 1000 for n in range(10_500)}  # ~10.5 MB of headers
    parts = [{"name": f"p{n}.bin", "type": "application/octet-stream", "encoding": "base64",
              "content": base64.b64encode(os.urandom(200_000)).decode()} for n in range(30)]  # 6 MB
    response = client.post("/webhook", json={"subject": "big", "headers": headers, "attachments": parts,
                                             "to": [{"email": "a@archive.test"}]})
    assert response.status_code == 200
    stored = app.extensions["database"].emails.find_one()
    assert "overflow" not in stored and stored["headers"]
    assert all("blob_id" in record and INLINE_DATA not in record for record in stored["attachments"])
    assert len(bson.encode(stored)) <= DOCUMENT_LIMIT
